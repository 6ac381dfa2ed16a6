"""Finishing a run: the weights it keeps, its test metrics, and on rank 0 the run folder's final files
(weights, config, plots, model card, and ``results.json`` last: its state marks the folder complete)."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_write
from .._version import __version__
from ..config.sources import HubRepo, PluginWeights, RegistryName, WeightSource
from ..data.contract import facts
from ..inference.error_analysis import split_logits
from ..inference.evaluate import evaluate
from ..inference.prepared import RunSetup
from ..models import adapters
from ..models.build import exchange_config
from ..parallel import distributed, fsdp
from ..parallel.distributed import log
from ..runs.card import model_card
from ..runs.folder import RunFolder, RunResults
from ..runs.plots import write_confusion, write_curves
from ..sharing import registry as catalog
from ..tasks.calibration import expected_calibration_error, fit_temperature
from ..tasks.multi_label import DEFAULT_THRESHOLD
from .loop import Trainer
from .setup import describe_augmentation
from .trainer_state import check_finite_weights


def finish_run(
    setup: RunSetup, trainer: Trainer, folder: RunFolder, state: str, reason: str, seconds: float
) -> RunResults:
    """The run's results (test metrics once finished), and on rank 0 the run folder's final files."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plots") as painter:
        # Rank 0, which writes the folder, draws the plots in a thread: the curves while the test split
        # is evaluated, the confusion matrix while the weights and config are written.
        plots: list[Future[list[str]]] = []
        try:
            return _finish(setup, trainer, folder, state, reason, seconds, painter if distributed.is_main() else None,
                           plots)  # fmt: skip
        except BaseException as exc:  # a plot that failed meanwhile is said too, never lost
            for failed in (plot.exception() for plot in plots):
                if failed is not None and failed is not exc:
                    exc.add_note(f"(drawing a plot failed too: {type(failed).__name__}: {failed})")
            raise


def _finish(
    setup: RunSetup,
    trainer: Trainer,
    folder: RunFolder,
    state: str,
    reason: str,
    seconds: float,
    painter: ThreadPoolExecutor | None,
    plots: list[Future[list[str]]],
) -> RunResults:
    if painter is not None:
        plots.append(painter.submit(write_curves, folder, trainer.history, trainer.learning_rates()))
    kept = trainer.keep_best()
    log(f"keeping {kept}")
    model = trainer.evaluator  # the weights the run keeps (the EMA's, if there is one)
    check_finite_weights(model)  # never finished with NaN weights, whatever the loss said
    history, monitor = trainer.history, trainer.monitor
    best = monitor.best if trainer.keep == "best" else None
    results = RunResults(
        state=state,
        reason=reason,
        recipe_hash=setup.recipe.hash,
        epochs=len(history),
        steps=trainer.step,
        train_seconds=seconds,
        monitor=monitor.metric,
        kept="best" if best else "last",  # no best before the monitor's first value: the last weights
        kept_epoch=best.epoch if best else (history[-1]["epoch"] if history else None),
        kept_value=best.value if best else (history[-1].get(monitor.metric) if history else None),
        stopped_early=trainer.stopped_early,
        class_weights=setup.class_weights,
        augmentation=describe_augmentation(setup),
        dataset=_dataset_record(setup),
    )
    if any("val_accuracy" in record for record in history):
        results.best_val_accuracy = max(record["val_accuracy"] for record in history if "val_accuracy" in record)
    if distributed.world_size() > 1:
        results.world_size = distributed.world_size()
        results.ranks_agree = distributed.ranks_agree(model)
        if not results.ranks_agree:
            raise RuntimeError("the ranks ended with different weights: DDP did not keep them in step")
    if adapters.is_adapted(model):  # kept merged into the base model's weights, and tested as kept
        model = adapters.merged(model).to(memory_format=setup.memory_format)
    thresholds = tuned_thresholds(setup, model) if setup.splits.multi_label else None
    temperature = 1.0
    if setup.recipe.train.calibrate:
        results.calibration = calibrate(setup, model)
        temperature = results.calibration["temperature"]
    if state == "finished":
        test = setup.batches(setup.splits.test)
        results.test = evaluate(model, test, setup.loss_fn, setup.splits.label_names, setup.dtype,
                                thresholds=thresholds, temperature=temperature)  # fmt: skip
        if results.calibration is not None:
            results.calibration |= {"test_ece_before": results.test.get("ece_uncalibrated", results.test["ece"]),
                                    "test_ece_after": results.test["ece"]}  # fmt: skip
    weights = fsdp.full_state_dict(model)  # a collective when sharded
    if painter is not None:
        plots.append(painter.submit(write_confusion, folder, results.test))
        files = _write_run(folder, setup, results, weights, thresholds, temperature, plots)
        trainer.loggers.finish(results.model_dump(exclude_none=True), files)
    return results


def tuned_thresholds(setup: RunSetup, model: nn.Module) -> list[float]:
    """A multi-label model's threshold per class: each maximising its class's F1 on the validation
    split (0.5 each without one)."""
    if setup.splits.val is None:
        log(f"thresholds: {DEFAULT_THRESHOLD} for every class (no validation split to tune them on)")
        return [DEFAULT_THRESHOLD] * len(setup.splits.label_names)
    val = evaluate(model, setup.batches(setup.splits.val), setup.loss_fn, setup.splits.label_names, setup.dtype,
                   tune=True)  # fmt: skip
    log(f"thresholds tuned on validation (F1 per class): {', '.join(f'{t:.3g}' for t in val['thresholds'])}")
    return val["thresholds"]


def calibrate(setup: RunSetup, model: nn.Module) -> dict[str, float]:
    """train.calibrate: the temperature fitted on the validation split, and its ECE before and after."""
    assert setup.splits.val is not None, "resolve_task refuses train.calibrate without a validation split"
    classes = len(setup.splits.label_names)
    logits, labels = split_logits(model, setup.batches(setup.splits.val), classes, setup.dtype)
    temperature = fit_temperature(logits, labels)
    before, after = expected_calibration_error(logits, labels), expected_calibration_error(logits / temperature, labels)
    log(
        f"calibration: temperature {temperature:.3f} fitted on validation, ECE {100 * before:.2f}% -> {100 * after:.2f}%"
    )
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after}


def _write_run(
    folder: RunFolder,
    setup: RunSetup,
    results: RunResults,
    weights: dict[str, torch.Tensor],
    thresholds: list[float] | None,
    temperature: float,
    plots: list[Future[list[str]]],
) -> list[Path]:
    """Write the run folder's final files; returns those worth keeping beside a tracker's run."""
    recipe, label_names = setup.recipe, setup.splits.label_names
    metadata = {"label_names": json.dumps(label_names), "recipe_hash": recipe.hash, "format": "pt"}
    if temperature != 1.0:  # stored with the weights: what the logits are divided by before softmax
        metadata["temperature"] = json.dumps(temperature)
    folder.write_weights(weights, metadata)
    if adapters.is_adapted(setup.model):
        base = base_model(recipe.model.pretrained, setup.model) or recipe.model.backbone
        for name, data in adapters.peft_files(setup.model, base).items():
            atomic_write(folder.file(name), data)
    config = exchange_config(setup.model, recipe.model.backbone, label_names, setup.preprocessing)
    # Files that may be shared hold the recipe without this machine's paths; recipe.toml keeps them.
    config["zoo"] = {"version": __version__, "recipe_hash": recipe.hash, "recipe": recipe.shareable().to_dict(),
                     **adapters.config_record(setup.model)}  # fmt: skip
    if thresholds is not None:  # a multi-label model: sigmoid scores, a label where its score reaches its threshold
        config["thresholds"] = thresholds
    if temperature != 1.0:
        config["temperature"] = temperature
    folder.write_config(config)
    drawn = [name for plot in plots for name in plot.result()]  # the thread's plots, which the card shows
    timm_architecture = config["architecture"] if hasattr(setup.model, "pretrained_cfg") else None
    hub_dataset = facts(setup.splits.train.dataset).hub_dataset
    card = model_card(
        recipe.shareable(), results, drawn, base_model(recipe.model.pretrained, setup.model), timm_architecture,
        hub_dataset,
    )  # fmt: skip
    folder.write_model_card(card)
    folder.write_results(results)  # last: its state marks the folder complete
    kept = (RunFolder.RESULTS, RunFolder.MODEL_CARD, *drawn, *([RunFolder.WEIGHTS] if recipe.log.weights else []))
    return [folder.file(name) for name in kept]


def _dataset_record(setup: RunSetup) -> dict[str, str] | None:
    """results.json's record of a pinned dataset: its Hub repo and the data.args that pin it (the commit)."""
    found = facts(setup.splits.train.dataset)
    if not found.pinned_args:
        return None
    return {
        **({"hub": found.hub_dataset} if found.hub_dataset else {}),
        **{k: str(v) for k, v in found.pinned_args.items()},
    }


def base_model(source: WeightSource, model: nn.Module) -> str | None:
    """The Hub repo the weights started from, for the model card (None when not from the Hub)."""
    if isinstance(source, HubRepo):
        return source.repo
    if isinstance(source, RegistryName):
        pinned = catalog.entry(source.name).sources.hub
        return pinned.repo if pinned else None
    if isinstance(source, PluginWeights):
        return getattr(model, "pretrained_cfg", {}).get("hf_hub_id")
    return None
