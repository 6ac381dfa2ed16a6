"""Every timm model as a zoo backbone: ``timm/resnet18``, or ``timm/resnet18.a1_in1k`` for a tag.

timm builds the whole classifier: zoo passes ``num_classes`` (timm's own head) and the
pretrained source, and timm's loaders fetch the weights: the Hugging Face Hub cache for
``pretrained = true`` and tags, ``hf-hub:org/repo[@revision]``, and ``local-dir:FOLDER`` for a
folder in timm's layout (``config.json`` + ``model.safetensors``, which every zoo run folder of a
timm backbone is). timm adapts the first convolution when ``in_chans`` differs from the weights'
and drops the classifier when ``num_classes`` does.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import timm
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from ..errors import ZooError


class TimmModels:
    """Every model in timm.list_models(): timm/NAME, and timm/NAME.TAG for its pretrained weights."""

    @staticmethod
    def names(pattern: str, pretrained: bool) -> list[str]:
        return timm.list_models(pattern, pretrained=pretrained)

    @staticmethod
    def factory(name: str) -> TimmModel | None:
        architecture, tag = split_model_name_tag(name)
        if not timm.is_model(architecture) or (tag and tag not in _tags()[architecture]):
            return None
        return TimmModel(name)

    @staticmethod
    def describe(name: str) -> str:
        architecture, tag = split_model_name_tag(name)
        tags = _tags().get(architecture, [])
        if not tags:
            return f"timm {architecture}, no pretrained weights"
        size = _input_size(name)
        if tag:
            return f"timm {architecture} with weights {tag}, input {size}"
        more = f" (+{len(tags) - 3})" if len(tags) > 3 else ""
        return f"timm {architecture}, input {size}, weights: {', '.join(tags[:3])}{more}"


@cache
def _tags() -> dict[str, list[str]]:
    """Architecture -> its pretrained tags, the default first (timm lists them that way)."""
    tags: dict[str, list[str]] = {}
    for name in timm.list_pretrained():
        architecture, tag = split_model_name_tag(name)
        tags.setdefault(architecture, []).append(tag)
    return tags


class TimmModel:
    """A timm model with its own classifier head; ``pretrained`` is a bool, ``hf-hub:...`` or ``local-dir:...``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__doc__ = _details(name)

    @property
    def fixed_input_size(self) -> bool:
        """Whether the architecture is built for one input size (a ViT: ``img_size``), not any (a CNN)."""
        config = get_pretrained_cfg(self.name)
        return bool(config and config.fixed_input_size)

    def __call__(
        self, num_classes: int = 1000, pretrained: bool | str = False, in_chans: int | None = None, **kwargs: Any
    ) -> nn.Module:
        if in_chans is not None:  # else timm's default, or the source's (a 1-channel run folder)
            kwargs["in_chans"] = in_chans
        loading = sorted(FILE_ARGUMENTS & kwargs.keys())
        if loading:
            raise ZooError(
                f"model.args.{loading[0]}: zoo loads weights only through model.pretrained (safetensors, never a "
                "pickle); point model.pretrained at a folder or hf-hub: repo instead"
            )
        source = pretrained if isinstance(pretrained, str) else self.name
        if pretrained is True:
            kwargs["pretrained_cfg_overlay"] = {"file": _safetensors_weights(self.name)}
        try:
            model = timm.create_model(source, pretrained=bool(pretrained), num_classes=num_classes, **kwargs)
        except LocalEntryNotFoundError:
            raise ZooError(_not_cached(self.name, source)) from None
        except HfHubHTTPError as exc:
            raise ZooError(f"model.pretrained: {source}: {str(exc).splitlines()[0]}") from None
        except (FileNotFoundError, TypeError) as exc:  # a folder without timm's files; a keyword timm lacks
            raise ZooError(f"model: timm/{self.name} from {source}: {exc}") from None
        built = model.pretrained_cfg.get("architecture")
        wanted, _ = split_model_name_tag(self.name)
        if built != wanted:
            raise ZooError(f"model.pretrained: {source} holds a timm '{built}', but the recipe builds 'timm/{wanted}'")
        return model


# timm.create_model keywords that make timm read a file or replace where weights come from.
FILE_ARGUMENTS = {"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}


def _safetensors_weights(name: str) -> str:
    """The local path of timm's pretrained weights for ``name`` as safetensors (downloaded once, then cached)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config = get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        raise ZooError(
            f"model.pretrained: timm/{name} has no weights on the Hugging Face Hub (timm serves them as a pickle "
            "from a URL, and zoo loads safetensors only); train it from scratch or from a run folder"
        )
    try:
        return hf_hub_download(config.hf_hub_id, "model.safetensors")
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: offline, and not cached
        raise ZooError(_not_cached(name, name)) from None
    except EntryNotFoundError:
        raise ZooError(
            f"model.pretrained: {config.hf_hub_id} holds timm/{name}'s weights only as a pickle "
            "(pytorch_model.bin), and zoo loads safetensors only"
        ) from None
    except HfHubHTTPError as exc:
        raise ZooError(f"model.pretrained: {config.hf_hub_id}: {str(exc).splitlines()[0]}") from None


def _details(name: str) -> str:
    """What ``zoo info timm/NAME`` prints under the arguments."""
    architecture, _ = split_model_name_tag(name)
    tags = _tags().get(architecture, [])
    lines = [f"timm model '{architecture}': any timm.create_model keyword is an argument (model.args)."]
    if tags:
        config = get_pretrained_cfg(name)
        lines.append(f"pretrained tags: {', '.join(tags)} (default: {tags[0]})")
        lines.append(
            f"input: {_input_size(name)}, mean {config.mean}, std {config.std}, "
            f"{config.interpolation}, crop_pct {config.crop_pct}"
        )
    else:
        lines.append("no pretrained weights in timm: train from scratch or from a run folder")
    return "\n".join(lines)


def _input_size(name: str) -> str:
    return "x".join(map(str, get_pretrained_cfg(name).input_size))


def _not_cached(name: str, source: str) -> str:
    offline = " and HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE else " and the Hub cannot be reached"
    origin = f" ({source})" if source != name else ""
    return (
        f"model.pretrained: the weights of timm/{name}{origin} are not in the Hugging Face cache "
        f"({os.path.abspath(hub_constants.HF_HUB_CACHE)}){offline}; download them once online "
        "(HF_HUB_OFFLINE unset), or point model.pretrained at a local folder"
    )
