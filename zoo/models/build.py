"""Models: a plugin's backbone plus the head zoo adds, or a plugin that builds its own head (timm's).

Two kinds of model plugin. A backbone (``mnist_cnn``) returns features with an int
``num_features``, and zoo adds the head: ``Classifier``, whose parameter names start with
``backbone.`` or ``head.``. A plugin whose factory takes ``num_classes`` (every ``timm/`` model)
builds the whole classifier the timm way, with ``get_classifier()`` and ``reset_classifier()``;
its weights keep the plugin's own names, so a run folder of a timm model is a timm model folder.

Either kind is built for the data (``data.DataInput``) through the arguments it takes and the
recipe leaves out: ``in_chans`` (a tensor dataset's channels; timm adapts a pretrained stem) and
``image_size`` for a backbone, ``img_size`` for a timm model built for one size (a ViT).
``check_input`` then puts one batch through it before the first step.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import sources
from ..config.model_section import HeadConfig, ModelConfig
from ..config.sources import HubRepo, LocalFolder, PluginWeights, RecipeOutput, RegistryName, Scratch, WeightSource
from ..data.preprocessing import Preprocessing
from ..errors import ZooError
from ..plugins import _registry as registry
from ..runs.folder import RunFolder

if TYPE_CHECKING:
    from ..data.splits import DataInput

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class Classifier(nn.Module):
    """``head(backbone(x))``: parameter names start with ``backbone.`` or ``head.``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, built_with: dict[str, int] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        # The input arguments the backbone was built with (in_chans, image_size): what it takes.
        self.built_with = built_with or {}
        # The preprocessing the loaded weights were trained with, the defaults for new image data.
        self.pretrained_preprocessing: Preprocessing | None = None

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_head(config: HeadConfig, num_features: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = num_features
    for hidden in config.hidden if config.type == "mlp" else []:
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        layers += [nn.Linear(width, hidden), ACTIVATIONS[config.activation]()]
        width = hidden
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_model(
    config: ModelConfig, label_names: list[str], data: DataInput | None = None
) -> tuple[nn.Module, str | None]:
    """The recipe's model for ``label_names`` and ``data``, with the weights ``config.pretrained`` names.

    ``config.pretrained`` must be resolved (zoo/sharing/resolve.py): a folder, ``true`` or ``false``.
    Returns the model and a line for the log saying what was loaded (None when nothing was).
    """
    source = config.pretrained
    if isinstance(source, LocalFolder) and not source.path.is_dir():
        raise ZooError(f"model.pretrained: folder not found: {source.path}")
    if isinstance(source, RecipeOutput | RegistryName | HubRepo):
        raise TypeError(f"{source} must be resolved to local files (zoo.sharing.resolve) before the model is built")
    if isinstance(source, LocalFolder):
        _refuse_pickles(source.path)
    factory = registry.check("model", config.backbone, config.args)
    for_data = for_the_data(factory, config.args, data)
    if registry.takes(factory, "num_classes"):
        return _build_own_head(config, label_names, source, for_data)
    return _build_classifier(config, factory, label_names, source, for_data)


def for_the_data(factory: Any, args: dict[str, Any], data: DataInput | None) -> dict[str, Any]:
    """The arguments that build the plugin ``factory`` for ``data``, where ``args`` (model.args) leave them out."""
    if data is None:
        return {}
    wanted: dict[str, Any] = {}
    if data.channels is not None and registry.takes(factory, "in_chans"):
        wanted["in_chans"] = data.channels
    if registry.takes(factory, "num_classes"):  # the timm way: a model takes any size, or is built for one
        if data.chosen and getattr(factory, "fixed_input_size", False):
            wanted["img_size"] = data.size
    elif data.size is not None and data.size[0] == data.size[1] and registry.takes(factory, "image_size"):
        wanted["image_size"] = data.size[0]
    return {key: value for key, value in wanted.items() if key not in args}


def _build_classifier(
    config: ModelConfig, factory: Any, label_names: list[str], source: WeightSource, for_data: dict[str, Any]
) -> tuple[Classifier, str | None]:
    supplied = {"pretrained": isinstance(source, PluginWeights)} if registry.takes(factory, "pretrained") else {}
    backbone = registry.instantiate("model", config.backbone, config.args, **supplied, **for_data)
    if not isinstance(getattr(backbone, "num_features", None), int):
        raise ZooError(
            f"model plugin {config.backbone} returned a module without an int `num_features`; "
            "a zoo backbone must have one (see 'Writing a plugin' in the README)"
        )
    given = {name: p.default for name, p in inspect.signature(factory).parameters.items()} | config.args | for_data
    built_with = {name: given[name] for name in ("in_chans", "image_size") if isinstance(given.get(name), int)}
    model = Classifier(backbone, build_head(config.head, backbone.num_features, len(label_names)), built_with)
    if isinstance(source, LocalFolder):
        return model, load_pretrained(model, RunFolder(source.path), config.backbone, label_names)
    return model, f"{config.backbone}'s own pretrained weights" if isinstance(source, PluginWeights) else None


def _build_own_head(
    config: ModelConfig, label_names: list[str], source: WeightSource, for_data: dict[str, Any]
) -> tuple[nn.Module, str | None]:
    """A plugin that builds its own classifier, the timm way; timm's loaders read the weights."""
    if config.head.type != "linear":
        raise ZooError(
            f"model.head.type = '{config.head.type}': {config.backbone} keeps its own linear classifier; "
            "set its options through model.args"
        )
    pretrained = f"local-dir:{source.path}" if isinstance(source, LocalFolder) else isinstance(source, PluginWeights)
    supplied: dict[str, Any] = {"num_classes": len(label_names), "pretrained": pretrained, **for_data}
    if config.head.dropout:
        supplied["drop_rate"] = config.head.dropout
    model = registry.instantiate("model", config.backbone, config.args, **supplied)
    if not pretrained:
        return model, None
    described = sources.text(source) if pretrained is not True else None
    origin = described or f"{config.backbone}'s weights ({model.pretrained_cfg.get('hf_hub_id')})"
    return model, adopt_head(model, label_names, origin)


def check_input(model: nn.Module, inputs: torch.Tensor, num_classes: int, backbone: str, dataset: str) -> None:
    """``inputs``, one batch as training will give it, through ``model`` (in eval mode, without gradients)
    before the first step: a model that cannot take the data is one line naming both, not a traceback."""
    shape = "x".join(map(str, inputs.shape[1:]))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(inputs)
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        if not _refuses_the_shape(reason) or isinstance(exc, torch.OutOfMemoryError):
            exc.add_note(f"(zoo was checking that model {backbone} takes a batch of {shape} inputs from '{dataset}')")
            raise  # a bug in the model, not the data's shape: its traceback
        raise ZooError(
            f"model {backbone} cannot take dataset '{dataset}''s {shape} inputs ({type(exc).__name__}: {reason}); "
            "set data.image_size, or the model.args that fix another input (in_chans, image_size, img_size)"
        ) from exc
    finally:
        model.train(training)
    if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != (len(inputs), num_classes):
        found = list(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ZooError(
            f"model {backbone} gives {found} for a batch of {len(inputs)} {shape} inputs from '{dataset}', "
            f"not [{len(inputs)}, {num_classes}] (one logit per class)"
        )


# How torch and timm word an input they cannot take (channels, sizes, patch multiples); any other
# error in the first forward is the model's own bug and keeps its traceback.
_SHAPE_REFUSALS = ("shape", "size", "channel", "dimension", "divisible", "mat1 and mat2", "expected input")


def _refuses_the_shape(reason: str) -> bool:
    lowered = reason.lower()
    return any(word in lowered for word in _SHAPE_REFUSALS) and "allocate" not in lowered


# Keywords that only change the shapes of a model (timm's, and zoo's image_size), which a run
# folder's config.json may set.
ARCHITECTURE_ARGS = frozenset(
    {"in_chans", "num_classes", "global_pool", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
     "mlp_ratio", "output_stride", "class_token", "reg_tokens", "no_embed_class", "dynamic_img_size", "image_size"}
)  # fmt: skip
PICKLES = ("pytorch_model.bin", "model.pth", "model.pt", "model.ckpt")


def _refuse_pickles(folder: Path) -> None:
    """zoo never unpickles: a folder whose weights are not model.safetensors is refused, saying how to convert."""
    if (folder / RunFolder.WEIGHTS).is_file():
        return
    pickle = next((folder / name for name in PICKLES if (folder / name).exists()), None)
    if pickle is not None:
        raise ZooError(
            f"model.pretrained: {pickle} is a pickle, and zoo loads safetensors only; if you trust it, convert it: "
            f"python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('{pickle}', weights_only=True), "
            f"'{folder / RunFolder.WEIGHTS}')\""
        )
    raise ZooError(f"model.pretrained: {folder} has no {RunFolder.WEIGHTS}")


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, named without it."""
    return {name.removeprefix(prefix): tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity; one host sync when there are none."""
    floats = {name: tensor for name, tensor in state.items() if tensor.is_floating_point()}
    if not floats or bool(torch.stack([t.isfinite().all() for t in floats.values()]).all()):
        return []
    return [name for name, tensor in floats.items() if not tensor.isfinite().all()]


def adopt_head(model: nn.Module, label_names: list[str], source: object) -> str:
    """Keep a pretrained timm-style head only if it was trained on the same labels; else a new one."""
    loaded = model.pretrained_cfg
    if loaded.get("num_classes") == len(label_names) and loaded.get("label_names") in (None, label_names):
        return f"loaded backbone and head from {source}"
    model.reset_classifier(len(label_names))
    return f"loaded backbone from {source}; new head for {len(label_names)} classes ({', '.join(label_names)})"


def exchange_config(
    model: nn.Module, backbone: str, label_names: list[str], preprocessing: Preprocessing
) -> dict[str, Any]:
    """config.json in timm's layout: for a timm model timm's own export, which ``local-dir:`` loads."""
    if not isinstance(model, Classifier):
        from timm.models._hub import save_config_for_hf  # exported from timm.models._hub only

        with tempfile.TemporaryDirectory() as scratch:  # timm writes a file; the run folder gets it atomically
            path = Path(scratch) / RunFolder.CONFIG
            model_config = {"label_names": label_names}
            save_config_for_hf(model, str(path), model_config=model_config, data_config=preprocessing.to_config())
            config = json.loads(path.read_text())
        pretrained_cfg = config["pretrained_cfg"]
        pretrained_cfg.pop("tag", None)  # the tag named the weights this model started from, not these
        if "label_names" in pretrained_cfg:  # the source's labels, if it had as many classes
            pretrained_cfg["label_names"] = label_names
        return config
    return {
        "architecture": backbone,
        "num_classes": len(label_names),
        "num_features": model.num_features,
        "label_names": label_names,
        "model_args": model.built_with,  # the data's in_chans and image_size: load_run builds the same backbone
        "pretrained_cfg": {**preprocessing.to_config(), "num_classes": len(label_names)},
    }


def load_pretrained(model: Classifier, run: RunFolder, backbone_name: str, label_names: list[str]) -> str:
    """Load a run folder's weights into ``model``; returns what was loaded, for the log.

    The backbone must match exactly; the head is loaded only when it has the same shape and
    the same label names, and is freshly initialised otherwise.
    """
    source_backbone = run.config.get("architecture")
    if source_backbone != backbone_name:
        raise ZooError(
            f"model.pretrained: {run} holds a '{source_backbone}' backbone, but the recipe builds '{backbone_name}'"
        )
    state = run.weights()
    backbone_state = prefixed(state, "backbone.")
    hint = "model.args differ from the pretrained run's, or it is another architecture"
    _check_same_tensors(
        model.backbone.state_dict(), backbone_state, "model.pretrained", "backbone tensor", run.path, hint
    )
    model.backbone.load_state_dict(backbone_state)
    if "pretrained_cfg" in run.config:  # written by every zoo run; a hand-made folder may lack it
        model.pretrained_preprocessing = run.preprocessing
    head_state = prefixed(state, "head.")
    own_head = model.head.state_dict()
    same_head = head_state.keys() == own_head.keys() and all(head_state[k].shape == own_head[k].shape for k in own_head)
    if same_head and run.label_names == label_names:
        model.head.load_state_dict(head_state)
        return f"loaded backbone and head from {run}"
    return f"loaded backbone from {run}; new head for {len(label_names)} classes ({', '.join(label_names)})"


def _check_same_tensors(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], key: str, noun: str, where: Path, hint: str
) -> None:
    """The tensors ``found`` in ``where`` have exactly the names and shapes of ``expected``; else a ZooError."""
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            raise ZooError(f"{key}: {where} lacks {noun} '{name}': {hint}")
        if name not in expected:
            raise ZooError(f"{key}: {where} has {noun} '{name}', which the model lacks: {hint}")
        if expected[name].shape != found[name].shape:
            raise ZooError(
                f"{key}: {noun} '{name}' is {list(found[name].shape)} in {where} but {list(expected[name].shape)} "
                f"here: {hint}"
            )


def load_run(run: RunFolder) -> nn.Module:
    """The model of a run folder, in eval mode, its label names as ``label_names`` (and where timm keeps them)."""
    model_config = run_model_config(run, Scratch())
    label_names = run.label_names
    model, _ = build_model(model_config, label_names)
    state = run.weights()
    hint = f"the weights do not fit the model that {RunFolder.CONFIG} and {RunFolder.RECIPE} describe"
    _check_same_tensors(model.state_dict(), state, "run folder", "tensor", run.file(RunFolder.WEIGHTS), hint)
    bad = nonfinite_tensors(state)
    if bad:
        raise ZooError(
            f"{run.file(RunFolder.WEIGHTS)} holds NaN or infinite values (tensor '{bad[0]}'): it cannot predict"
        )
    model.load_state_dict(state)
    model.label_names = label_names
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, "label_names": label_names}
    return model.eval()


def run_model_config(run: RunFolder, pretrained: WeightSource) -> ModelConfig:
    """The recipe's model section of a run folder, with the architecture arguments its config.json
    records, its weights from ``pretrained`` (resolved): what builds the run's model again."""
    recipe = run.recipe
    # timm records the arguments the weights were built with, including any its source set (in_chans).
    # Only arguments that shape the architecture are taken from a run folder: any other could make
    # timm read a file (checkpoint_path) or change where weights come from.
    built_with = {key: value for key, value in run.model_args.items() if key != "num_classes"}
    refused = sorted(key for key in built_with if key not in ARCHITECTURE_ARGS)
    if refused:
        raise ZooError(
            f"{run.file(RunFolder.CONFIG)}: model_args.{refused[0]} is not an architecture argument zoo accepts "
            f"from a run folder (it accepts {', '.join(sorted(ARCHITECTURE_ARGS))})"
        )
    return recipe.model.model_copy(update={"pretrained": pretrained, "args": {**built_with, **recipe.model.args}})
