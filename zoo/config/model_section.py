"""The recipe's ``[model]`` section: backbone, pretrained source, head, freezing policy and adapter."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from . import sources
from ._section import MAX_SIZE, Pretrained, Section, Size


class HeadConfig(Section):
    type: Literal["linear", "mlp"] = Field("linear", description="linear, or mlp with hidden layers")
    num_classes: Size | None = Field(None, description="outputs; default: the number of selected classes")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each linear layer of the head")
    hidden: list[Size] = Field([256], description="hidden widths of an mlp head")
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = Field("relu", description="activation of an mlp head")

    @model_validator(mode="after")
    def _mlp_keys_need_an_mlp(self) -> HeadConfig:
        if self.type == "linear":
            self.refuse_ignored("model.head", ["hidden", "activation"], 'to a linear head: set model.head.type = "mlp"')
        return self


class FreezeStage(Section):
    epoch: int = Field(ge=1, le=MAX_SIZE, description="first epoch (counting from 1) in which these parameters train")
    unfreeze: list[str] = Field(description="glob patterns over parameter names, or 'backbone'")
    lr_mult: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="their learning rate as a multiple of the one their group has (optim.lr, times optim.backbone_lr_mult or their layer's decay)",
    )


class FreezeConfig(Section):
    freeze: list[str] = Field(
        [], description="glob patterns over parameter names ('backbone.' may be left out), or 'backbone'"
    )
    unfreeze: list[str] = Field([], description="exceptions to freeze: patterns that stay trainable")
    train_bn: bool = Field(False, description="train frozen BatchNorm layers (by default they stay in eval mode)")
    stages: list[FreezeStage] = Field([], description="staged unfreezing")

    @model_validator(mode="before")
    @classmethod
    def _single_pattern(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("freeze"), str):
            return {**data, "freeze": [data["freeze"]]}
        return data


class AdapterConfig(Section):
    """A low-rank adapter (peft) in place of full fine-tuning: only it and the head train."""

    kind: Literal["lora", "dora"] = Field("lora", description="'lora', or 'dora' (weight-decomposed LoRA)")
    r: Annotated[int, Field(ge=1, le=4096)] = Field(16, description="the adapter's rank")
    alpha: float = Field(32.0, gt=0.0, description="scale: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    target: str | list[str] = Field(
        description="a regular expression (or a list) searched in module names: the layers to adapt, e.g. 'qkv'"
    )

    @model_validator(mode="before")
    @classmethod
    def _float_alpha(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("alpha"), int) and not isinstance(data["alpha"], bool):
            return {**data, "alpha": float(data["alpha"])}  # alpha = 32 in TOML is an integer
        return data


class ModelConfig(Section):
    backbone: str = Field(description="a zoo.models plugin name (`zoo list models`)")
    pretrained: Pretrained = Field(
        sources.Scratch(),
        description=(
            "false, true (the plugin's own weights), a run folder, 'recipe:FILE.toml' (that recipe's output), "
            "'registry:NAME' (registry.json's pinned weights), 'hf-hub:ORG/REPO[@REVISION]', or for timm/ "
            "backbones a timm model folder"
        ),
    )
    args: dict[str, Any] = Field({}, description="arguments for the backbone plugin (`zoo info NAME`)")
    head: HeadConfig = HeadConfig()
    freeze: FreezeConfig = FreezeConfig()
    adapter: AdapterConfig | None = Field(None, description="train a LoRA/DoRA adapter (peft) and the head alone")

    @model_validator(mode="after")
    def _adapter_or_freezing(self) -> ModelConfig:
        if self.adapter is not None and self.freeze != FreezeConfig():
            raise ValueError(
                "model.adapter trains the adapter and the head alone, with every base weight frozen: "
                "leave model.freeze out"
            )
        return self
