"""Low-rank adapters (LoRA, DoRA) on any backbone, through peft, as its custom-models guide does for timm.

``attach`` wraps the model in peft's ``PeftModel`` with the recipe's targets and the head in
``modules_to_save``: every base weight is frozen, the adapters and the head train. Training goes on
with the model itself (peft injects its layers into it, in place), so that names, freezing summaries,
DDP and checkpoints see an ordinary module; the wrapper is kept aside for what only peft writes.

A finished run keeps both forms: peft's own files (``adapter_config.json``,
``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained`` loads onto the base model)
and the merged weights under the base model's names, which everything that reads a run folder takes.
Its config.json pins the base (``zoo.adapter_base``: where it came from and the sha256 of every file
it was built from), so that the adapter alone can be shared and applied again elsewhere
(``merged_weights``) to exactly those weights.
"""

from __future__ import annotations

import copy
import json
import re
import weakref
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from .. import _files
from .._safetensors import safetensors_bytes
from ..config.model_section import AdapterConfig
from ..config.sources import HUB_PREFIX, LocalFolder, PluginWeights, WeightSource
from ..errors import ZooError
from ..runs.folder import FilePin, RunFolder
from .freeze import head_prefixes

# The layers peft's LoRA and DoRA wrap.
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)

# The files of a base model that building on it reads (timm's local-dir: and zoo's run folders alike).
BASE_FILES = (RunFolder.WEIGHTS, RunFolder.CONFIG)
# Where config.json keeps the pin of an adapter run's base, in its "zoo" section.
BASE_KEY = "adapter_base"


class BasePin(BaseModel):
    """The weights an adapter adapts: their source and the sha256 of every file the base was built from."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = Field(description="hf-hub:ORG/NAME@COMMIT, or the name of the local folder the base was read from")
    files: dict[str, FilePin] = Field(description="model.safetensors (and config.json) of the base")

    @model_validator(mode="after")
    def _pins_the_base_files(self) -> BasePin:
        if RunFolder.WEIGHTS not in self.files or not set(self.files) <= set(BASE_FILES):
            raise ValueError(f"files must pin {RunFolder.WEIGHTS} (and {RunFolder.CONFIG}, if any) and nothing else")
        return self


_wrappers: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
_bases: weakref.WeakKeyDictionary[nn.Module, BasePin | None] = weakref.WeakKeyDictionary()


def attach(model: nn.Module, config: AdapterConfig, backbone: str, base: WeightSource | None = None) -> nn.Module:
    """``model`` with adapters on the layers ``config.target`` names, and only they and the head trainable;
    ``base`` is the resolved source of its weights, which the run pins."""
    from peft import LoraConfig, get_peft_model

    pin = pin_base(base, model) if base is not None else None
    heads = head_prefixes(model)
    targets = target_layers(model, config.target, heads, backbone)
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        use_dora=config.kind == "dora",
        target_modules=targets,
        modules_to_save=[prefix.removesuffix(".") for prefix in heads],
    )
    try:
        wrapper = get_peft_model(model, peft_config)
    except (ValueError, TypeError) as exc:  # peft's word on a layer it cannot adapt
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZooError(f"model.adapter: peft cannot adapt {backbone}: {reason}") from None
    inner = wrapper.base_model.model
    _wrappers[inner] = wrapper
    _bases[inner] = pin
    return inner


def pin_base(source: WeightSource, model: nn.Module) -> BasePin | None:
    """The pin of the weights ``model`` was built from (``source`` resolved to local files): a folder, or
    timm's own Hub weights (``true``) from the Hugging Face cache; None for random or a plugin's other weights."""
    folder = None
    if isinstance(source, LocalFolder):
        folder = source.path
    elif isinstance(source, PluginWeights) and getattr(model, "pretrained_cfg", {}).get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.pretrained_cfg["hf_hub_id"], RunFolder.WEIGHTS)
        folder = Path(cached).parent if isinstance(cached, str) else None
    if folder is None or not (folder / RunFolder.WEIGHTS).is_file():
        return None
    files = {name: _pin(folder / name) for name in BASE_FILES if (folder / name).is_file()}
    # A local folder by its name alone: config.json is shared, and holds no path of this machine (recipe.toml does).
    return BasePin(source=hub_snapshot(folder) or folder.resolve().name, files=files)


def hub_snapshot(folder: Path) -> str | None:
    """``hf-hub:ORG/NAME@COMMIT`` for a snapshot in the Hugging Face cache (``models--ORG--NAME/snapshots/COMMIT``)."""
    repo, snapshots = folder.parent.parent.name, folder.parent.name
    if snapshots != "snapshots" or not repo.startswith("models--") or not re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return None
    return f"{HUB_PREFIX}{repo.removeprefix('models--').replace('--', '/')}@{folder.name}"


def _pin(path: Path) -> FilePin:
    return FilePin(sha256=_files.sha256_of(path), size=path.stat().st_size)


def config_record(model: nn.Module) -> dict[str, Any]:
    """What config.json's "zoo" section records of an adapted ``model``: the pin of its base (nothing otherwise)."""
    pin = _bases.get(model)
    return {BASE_KEY: pin.model_dump()} if pin is not None else {}


def restore_base(model: nn.Module, record: dict[str, Any] | None) -> None:
    """A resumed run's pin: the base it was first built from (its checkpoint's record), not the weights
    its source names now (a Hub branch moves on, a folder is replaced), which the checkpoint's overwrite."""
    if model in _bases:
        _bases[model] = BasePin.model_validate(record) if record is not None else None


def base_pin_of(run: RunFolder) -> BasePin | None:
    """The pin of the base an adapter run adapts (config.json), None for a run without one."""
    found = run.config["zoo"].get(BASE_KEY)
    if found is None:
        return None
    try:
        return BasePin.model_validate(found)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ZooError(
            f"{run.file(RunFolder.CONFIG)}: zoo.{BASE_KEY}{'.' + where if where else ''}: "
            f"{str(error['msg']).removeprefix('Value error, ')}"
        ) from None


def check_base(folder: Path, pin: BasePin, label: str) -> None:
    """Every file of the base in ``folder`` is the one the adapter was trained on; else a ZooError naming it."""
    for name, expected in pin.files.items():
        path = folder / name
        found = _files.unpinned_sha256(path, expected.sha256)
        if found:
            raise ZooError(
                f"{label}: the base weights' {path} has sha256 {found}, but the adapter was trained on "
                f"{pin.source} whose {name} has sha256 {expected.sha256}; refusing to apply the adapter to other weights"
            )


def merged_weights(run: RunFolder, base: Path) -> dict[str, torch.Tensor]:
    """The weights of an adapter run rebuilt from its base (a folder of the pinned files) and its peft files:
    the base model built as the run built it, peft's adapter loaded onto it and merged in."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    from .build import build_model, run_model_config

    model, _ = build_model(run_model_config(run, LocalFolder(base)), run.label_names)
    try:
        adapted = PeftModel.from_pretrained(model, str(run.path))
    except (ValueError, KeyError, RuntimeError, AttributeError) as exc:  # peft's word on files that do not fit
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ZooError(f"{run.path}: peft cannot apply {RunFolder.ADAPTER_WEIGHTS} to its base: {reason}") from None
    # peft only warns about an adapter tensor the file lacks, and merges the layer's fresh weights instead.
    with safe_open(run.file(RunFolder.ADAPTER_WEIGHTS), "pt") as saved:
        missing = sorted(set(get_peft_model_state_dict(adapted)) - set(saved.keys()))
    if missing:
        raise ZooError(
            f"{run.file(RunFolder.ADAPTER_WEIGHTS)} lacks {len(missing)} of the tensors {RunFolder.ADAPTER_CONFIG} "
            f"asks for (first '{missing[0]}'): it is damaged or belongs to other settings; push the run again"
        )
    return adapted.merge_and_unload().state_dict()


def target_layers(model: nn.Module, target: str | list[str], heads: tuple[str, ...], backbone: str) -> list[str]:
    """The names of the adaptable layers outside the head in which some pattern of ``target`` is found."""
    patterns = []
    for pattern in [target] if isinstance(target, str) else target:
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            raise ZooError(f"model.adapter.target: {pattern!r} is not a regular expression ({exc})") from None
    adaptable = [
        name
        for name, module in model.named_modules()
        if isinstance(module, ADAPTABLE) and not f"{name}.".startswith(heads)
    ]
    found = [name for name in adaptable if any(pattern.search(name) for pattern in patterns)]
    if not found:
        some = ", ".join(adaptable[:6]) + (", ..." if len(adaptable) > 6 else "")
        raise ZooError(
            f"model.adapter.target {target!r} matches no layer of {backbone} that an adapter can wrap; "
            f"its layers are named like: {some or 'none (no Linear, Conv or Embedding outside the head)'}"
        )
    return found


def is_adapted(model: nn.Module) -> bool:
    return model in _wrappers


def merged(model: nn.Module) -> nn.Module:
    """A copy of the base model with every adapter merged in, under the base model's own names: what
    the run keeps, and so what its test pass evaluates (in bf16 merged weights round otherwise).
    Merged in the contiguous memory format, as ``merged_weights`` merges a shared adapter again: a
    convolution's merge sums in another order in channels-last, and both must give the same bits."""
    return copy.deepcopy(_wrappers[model]).to(memory_format=torch.contiguous_format).merge_and_unload()


def peft_files(model: nn.Module, base: str) -> dict[str, bytes]:
    """peft's own files for the adapted ``model`` (what ``PeftModel.save_pretrained`` writes), ``base``
    naming the weights it adapts."""
    from peft import get_peft_model_state_dict

    wrapper = _wrappers[model]
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in get_peft_model_state_dict(wrapper).items()}
    config = wrapper.peft_config["default"].to_dict()
    config.update(base_model_name_or_path=base, inference_mode=True)
    text = json.dumps({key: sorted(value) if isinstance(value, set) else value for key, value in config.items()},
                      indent=2, sort_keys=True)  # fmt: skip
    return {
        RunFolder.ADAPTER_CONFIG: text.encode(),
        RunFolder.ADAPTER_WEIGHTS: safetensors_bytes(tensors, {"format": "pt"}),
    }


def describe(model: nn.Module, config: AdapterConfig) -> str:
    """The run's first lines: what is adapted, and how much of the model trains."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    layers = len(_wrappers[model].peft_config["default"].target_modules)
    return (
        f"adapter: {config.kind} r={config.r} alpha={config.alpha:g} on {layers} layers: {trainable:,} trainable "
        f"of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
