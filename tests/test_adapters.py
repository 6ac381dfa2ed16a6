"""LoRA and DoRA adapters through peft: what trains, what a run folder keeps, and how plain peft reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import RECIPES, assert_user_error, kill_then_resume, zoo_command
from safetensors.torch import load_file

import zoo
from zoo.config import recipe as recipes
from zoo.errors import ZooError
from zoo.models import adapters
from zoo.runs.folder import RunFolder
from zoo.training.runner import run
from zoo.training.setup import build_run

# timm's tiny ViT on three MNIST digits at 32 px: its blocks' attention has qkv, its MLP fc1 and fc2.
VIT = ["model.backbone=timm/test_vit", "data.image_size=32", "data.classes=[0,1,2]", "data.per_class=30",
       "data.batch_size=16", "train.precision=fp32", "data.val_split=0.2"]  # fmt: skip
LORA = 'model.adapter={target = "qkv", r = 4, alpha = 8}'


def vit_recipe(*overrides: str):
    return recipes.load(RECIPES / "mnist.toml", [*VIT, *overrides])


@pytest.mark.parametrize(
    ("overrides", "adapted"),
    [
        ([*VIT, LORA], r"blocks\.\d\.attn\.qkv\.lora_[AB]\.default\.weight"),
        (
            [*VIT, 'model.adapter={kind = "dora", target = ["fc1", "fc2"], r = 2}'],
            r"blocks\.\d\.mlp\.fc[12]\.lora_(A|B|magnitude_vector)\.default(\.weight)?",
        ),
        (
            ["data.classes=[0,1]", "data.per_class=20", 'model.adapter={target = "conv", r = 2}'],  # zoo's own CNN
            r"backbone\.conv\d\.lora_[AB]\.default\.weight",
        ),
    ],
    ids=["vit-lora", "vit-dora", "cnn-conv-lora"],
)
def test_only_the_adapter_and_the_head_train(overrides: list[str], adapted: str, mnist_dir: Path) -> None:
    import re

    setup = build_run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    trainable = {name for name, parameter in setup.model.named_parameters() if parameter.requires_grad}
    head = {name for name in trainable if ".modules_to_save.default." in name}
    assert head and all(name.startswith("head.") for name in head)
    assert trainable - head and all(re.fullmatch(adapted, name) for name in trainable - head), sorted(trainable)
    given = {id(parameter) for group in setup.optimizer.param_groups for parameter in group["params"]}
    assert given == {id(parameter) for parameter in setup.model.parameters() if parameter.requires_grad}
    total = sum(parameter.numel() for parameter in setup.model.parameters())
    line = adapters.describe(setup.model, setup.recipe.model.adapter)
    assert f"trainable of {total:,} parameters" in line


@pytest.fixture(scope="module")
def lora_runs(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A ViT trained in full (the base), then a LoRA run on it for the same digits."""
    root = tmp_path_factory.mktemp("lora")
    base = run(vit_recipe("train.epochs=2", f"output.dir={root / 'base'}"), progress=False)
    lora = run(vit_recipe("train.epochs=2", LORA, f"model.pretrained={base.folder}", "optim.lr=0.01",
                          f"output.dir={root / 'lora'}"), progress=False)  # fmt: skip
    assert base.results.state == lora.results.state == "finished"
    return Path(base.folder), Path(lora.folder)


def images(count: int = 8) -> torch.Tensor:
    return torch.randn(count, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_plain_peft_on_plain_timm_gives_the_merged_weights_logits(lora_runs: tuple[Path, Path]) -> None:
    from peft import PeftModel

    base_folder, lora_folder = lora_runs
    config = json.loads((lora_folder / RunFolder.CONFIG).read_text())
    arguments = {"num_classes": config["num_classes"], **config["model_args"]}  # as timm's local-dir: builds it
    base = timm.create_model("test_vit", **arguments)
    base.load_state_dict(load_file(base_folder / RunFolder.WEIGHTS))  # the weights the adapter adapts
    adapted = PeftModel.from_pretrained(base, str(lora_folder)).eval()
    merged = zoo.load(lora_folder).eval()  # model.safetensors: the adapter merged in
    with torch.no_grad():
        unmerged_logits, merged_logits = adapted(images()), merged(images())
    assert torch.allclose(unmerged_logits, merged_logits, atol=1e-5)
    untouched = timm.create_model("test_vit", **arguments)
    untouched.load_state_dict(load_file(base_folder / RunFolder.WEIGHTS))
    with torch.no_grad():
        assert not torch.allclose(untouched.eval()(images()), merged_logits, atol=1e-3)  # the adapter did change it
    adapter_bytes = (lora_folder / RunFolder.ADAPTER_WEIGHTS).stat().st_size
    assert adapter_bytes < (lora_folder / RunFolder.WEIGHTS).stat().st_size / 2


@pytest.mark.slow
def test_a_lora_run_folder_works_with_eval_and_predict_unchanged(lora_runs: tuple[Path, Path], mnist_png: Path) -> None:
    _, lora_folder = lora_runs
    results = json.loads((lora_folder / RunFolder.RESULTS).read_text())
    evaluated = zoo_command("eval", str(lora_folder), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == results["test"]["accuracy"]
    digit = next((mnist_png / "test" / "1").iterdir())
    predicted = zoo_command("predict", str(lora_folder), str(digit), "--json")
    assert predicted.returncode == 0, predicted.stderr


def test_a_bf16_adapter_run_is_tested_as_kept_so_zoo_eval_repeats_it(mnist_dir: Path, tmp_path: Path) -> None:
    """The test pass evaluates the merged weights model.safetensors holds: in bf16, the adapter applied
    on the fly rounds differently from the same adapter merged."""
    from click.testing import CliRunner

    from zoo.cli import cli

    overrides = ["data.classes=[0,1]", "data.per_class=40", "data.batch_size=16", "train.precision=bf16",
                 'model.adapter={target = "conv", r = 2}', f"output.dir={tmp_path / 'run'}"]  # fmt: skip
    result = run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    evaluated = CliRunner().invoke(cli, ["eval", str(result.folder), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads(evaluated.stdout)
    assert again["confusion_matrix"] == result.results.test["confusion_matrix"]
    assert again["accuracy"] == result.results.test["accuracy"]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ('model.adapter={kind = "ia3", target = "qkv"}', ("model.adapter.kind", "lora")),
        ('model.adapter={target = "qkv", r = 0}', ("model.adapter.r",)),
        ('model.adapter={target = "qkv", alpha = 0}', ("model.adapter.alpha",)),
        ('model.adapter={target = "qkv", dropout = 1.0}', ("model.adapter.dropout",)),
        ("model.adapter={r = 4}", ("model.adapter.target",)),
        ('model.freeze.unfreeze=["blocks"]', ("model.adapter", "model.freeze")),
    ],
)
def test_adapter_settings_that_cannot_work_are_one_line(override: str, fragments: tuple[str, ...]) -> None:
    extra = [LORA] if override.startswith("model.freeze") else []
    with pytest.raises(ZooError) as raised:
        vit_recipe(*extra, override)
    assert all(fragment in str(raised.value) for fragment in fragments), str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_adapter_without_peft_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    with pytest.raises(ZooError, match=r"pip install 'zoo\[peft\]'"):
        build_run(vit_recipe(LORA), progress=False)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (['model.adapter={target = "nothing_here"}'], ("model.adapter.target", "nothing_here", "blocks.0.attn.qkv")),
        (['model.adapter={target = "qkv("}'], ("model.adapter.target", "not a regular expression")),
        ([LORA, 'train.strategy="fsdp"'], ("model.adapter", "fsdp")),
        ([LORA, "train.ema=0.99"], ("model.adapter", "train.ema")),
    ],
)
def test_adapters_refused_by_the_model_are_one_line_and_write_nothing(
    overrides: list[str], fragments: tuple[str, ...], mnist_dir: Path, tmp_path: Path
) -> None:
    result = zoo_command("run", str(RECIPES / "mnist.toml"), *VIT, *overrides, f"output.dir={tmp_path / 'run'}")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_adapter_run_killed_and_resumed_ends_bit_identical(mnist_dir: Path, tmp_path: Path) -> None:
    args = [str(RECIPES / "mnist.toml"), *VIT, LORA, "train.epochs=2", "train.checkpoint_every=3"]
    kill_then_resume(tmp_path, args, "step-00000003")  # 5 steps an epoch
    for folder in ("whole", "killed"):
        assert (tmp_path / folder / RunFolder.ADAPTER_WEIGHTS).is_file()


@pytest.mark.slow
def test_an_adapter_run_on_two_ranks_reduces_only_what_trains_and_agrees(mnist_dir: Path, tmp_path: Path) -> None:
    result = zoo_command("run", "--nproc", "2", str(RECIPES / "mnist.toml"), *VIT, LORA, "train.epochs=1",
                         f"output.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / RunFolder.RESULTS).read_text())
    assert results["ranks_agree"] is True and results["world_size"] == 2
