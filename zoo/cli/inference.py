"""``zoo eval``, ``zoo export`` and ``zoo predict``: what a trained run does with data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config.sources import HUB_PREFIX, RECIPE_PREFIX, REGISTRY_PREFIX
from ..errors import ZooError
from .training import print_scores


@click.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("run_folder", metavar="RUN")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option(
    "--errors", default="errors.csv", show_default=True, type=click.Path(path_type=Path),
    help="Where to write the misclassified items (file or index, true and predicted labels, confidence) as CSV.",
)  # fmt: skip
@click.pass_context
def eval_command(ctx: click.Context, run_folder: str, split: str, as_json: bool, errors: Path) -> None:
    """Evaluate a saved run again: accuracy, macro precision/recall/F1, per-class table (a multi-label
    run: mAP, and F1 at its thresholds); the misclassified items go to errors.csv.

    RUN is a run folder, or 'registry:NAME' or 'hf-hub:ORG/NAME[@REVISION]' (pulled first).

    Data settings can change with --data.KEY=VALUE, e.g. --data.root=/other/copy or
    --data.eval_batch_size=64; the classes must stay those the run was trained on.
    """

    from ..inference.evaluate import evaluate_run
    from ..parallel.device import keep_freed_host_memory
    from ..sharing.resolve import local_run_folder

    overrides = _data_overrides(ctx, "RUN, --split, --json, --errors")
    keep_freed_host_memory()  # its batches reuse the memory they free
    metrics = evaluate_run(local_run_folder(run_folder), split, overrides, errors)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        print_scores(metrics, split)
        click.echo(f"{metrics['errors']} misclassified {split} items: {errors}")


def _data_overrides(ctx: click.Context, takes: str) -> list[str]:
    """The --data.KEY=VALUE arguments a command passed through, as recipe overrides."""
    overrides = []
    for extra in ctx.args:
        if not extra.startswith("--data.") or "=" not in extra:
            raise ZooError(f"unexpected argument {extra!r}: `zoo {ctx.info_name}` takes {takes} and --data.KEY=VALUE")
        overrides.append(extra.removeprefix("--"))
    return overrides


@click.command("export", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--format", "format_", required=True, type=click.Choice(["onnx", "exported-program", "torchscript"]),
    help="onnx (onnxruntime and most runtimes), exported-program (torch.export, .pt2) or torchscript (deprecated).",
)  # fmt: skip
@click.option("--dynamic-batch", is_flag=True, help="Accept any batch size (default: a batch of one image).")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset (default: the exporter's).")
@click.option(
    "--output", type=click.Path(path_type=Path),
    help="Where to write (default: RUN/model.onnx, .pt2, ...); never over a run's own files or through a link.",
)  # fmt: skip
@click.pass_context
def export_command(
    ctx: click.Context, run_folder: Path, format_: str, dynamic_batch: bool, opset: int | None, output: Path | None
) -> None:
    """Export a finished run's model for deployment, verified against PyTorch.

    The exported model runs (onnxruntime, the loaded program or script) on 64 images of the run's
    test split and is kept only if its logits match PyTorch's within 1e-3; the largest difference
    and the top-1 agreement are printed. The label names and preprocessing (input size, mean,
    std, interpolation, crop) go into the file: ONNX metadata props, or zoo.json in a .pt2 or
    TorchScript archive. ONNX needs `pip install 'zoo[export]'`. Data settings can change with
    --data.KEY=VALUE, as in `zoo eval`.
    """
    from ..inference.export import export_run

    if str(run_folder).startswith((HUB_PREFIX, REGISTRY_PREFIX, RECIPE_PREFIX)):  # as typed: Path keeps the prefix
        raise ZooError(
            f"zoo export takes a run folder, not {run_folder}: it writes beside the run's own files (a Hub or "
            "registry run: `zoo pull` it, then export a copy of the folder pull prints)"
        )
    overrides = _data_overrides(ctx, "RUN, --format, --dynamic-batch, --opset, --output")
    exported = export_run(run_folder, format_, dynamic_batch, opset, output, overrides)
    click.echo(f"exported with {exported.exporter}")
    click.echo(
        f"verified on {exported.images} test images: max |logit difference| {exported.max_abs_diff:.2e}, "
        f"top-1 agreement {exported.top1_agreement:.1%}"
    )
    click.echo(f"wrote {exported.path}")


@click.command()
@click.argument("run_folder", metavar="RUN")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Labels shown per image.")
@click.option(
    "--backend", default="torch", show_default=True, type=click.Choice(["torch", "onnxruntime"]),
    help="torch: the run's weights; onnxruntime: its exported model.onnx (`zoo export RUN --format onnx`).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
def predict(run_folder: str, files: tuple[str, ...], top_k: int, backend: str, as_json: bool) -> None:
    """Predict the labels of image FILES (PNG, JPEG; any size, grayscale or colour) with a run.

    RUN is a run folder, or 'registry:NAME' or 'hf-hub:ORG/NAME[@REVISION]' (pulled first).

    Each image goes through the run's own preprocessing (its input size, mean and std). An
    unreadable file gets one line on stderr and the rest are still predicted; the exit code
    is then 2.
    """

    from ..inference.predict import predict_files
    from ..sharing.resolve import local_run_folder

    predictions, errors = predict_files(local_run_folder(run_folder), [Path(f) for f in files], top_k, backend)
    if as_json:
        click.echo(json.dumps(predictions, indent=2))
    else:
        for prediction in predictions:
            ranked = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in prediction["top"])
            labels = f" -> labels: {' '.join(prediction['labels']) or '(none)'}" if "labels" in prediction else ""
            click.echo(f"{prediction['file']}: {ranked}{labels}")
    for error in errors:
        click.echo(f"zoo: error: {error}", err=True)
    if errors:
        sys.exit(2)
