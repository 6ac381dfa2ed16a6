"""Low-rank adapters (LoRA, DoRA) on any backbone, through peft, as its custom-models guide does for timm.

``attach`` wraps the model in peft's ``PeftModel`` with the recipe's targets and the head in
``modules_to_save``: every base weight is frozen, the adapters and the head train. Training goes on
with the model itself (peft injects its layers into it, in place), so that names, freezing summaries,
DDP and checkpoints see an ordinary module; the wrapper is kept aside for what only peft writes.

A finished run keeps both forms: peft's own files (``adapter_config.json``,
``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained`` loads onto the base model)
and the merged weights under the base model's names, which everything that reads a run folder takes.
"""

from __future__ import annotations

import copy
import json
import re
import weakref
from typing import Any

from torch import nn

from .._safetensors import safetensors_bytes
from ..config.model_section import AdapterConfig
from ..errors import ZooError
from ..runs.folder import RunFolder
from .freeze import head_prefixes

# The layers peft's LoRA and DoRA wrap.
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)

_wrappers: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def attach(model: nn.Module, config: AdapterConfig, backbone: str) -> nn.Module:
    """``model`` with adapters on the layers ``config.target`` names, and only they and the head trainable."""
    from peft import LoraConfig, get_peft_model

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
    return inner


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
    the run keeps, and so what its test pass evaluates (in bf16 merged weights round otherwise)."""
    return copy.deepcopy(_wrappers[model]).merge_and_unload()


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
