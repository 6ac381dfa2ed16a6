"""The model card: Hugging Face front matter that the Hub's own parser reads back, and what it says."""

from __future__ import annotations

from pathlib import Path

from conftest import RECIPES
from huggingface_hub import ModelCard
from hypothesis import given
from hypothesis import strategies as st

from zoo.config import recipe as recipes
from zoo.runs.card import EXPORTS_BEGIN, EXPORTS_END, model_card, with_exports
from zoo.runs.folder import RunResults

TEST = {"accuracy": 0.91, "precision": 0.9, "recall": 0.89, "f1": 0.895, "loss": 0.3}


def test_front_matter_and_metrics_parse_back() -> None:
    recipe = recipes.load(RECIPES / "mnist_finetune.toml", check=False)
    results = RunResults(state="finished", recipe_hash=recipe.hash, test=TEST)
    card = ModelCard(model_card(recipe, results, ["loss.png"], base_model=None, timm_architecture=None))
    assert card.data.library_name == "zoo" and card.data.license == recipe.license
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported == {key: TEST[key] for key in ("accuracy", "precision", "recall", "f1")}
    assert "![loss](loss.png)" in card.text and "## Results (finished run)" in card.text
    assert "timm.create_model" not in card.text and "model.label_names" in card.text
    assert recipe.to_toml() in card.text


def test_timm_models_and_hub_sources_say_so() -> None:
    recipe = recipes.load(RECIPES / "timm_finetune.toml", check=False)
    results = RunResults(state="interrupted", recipe_hash=recipe.hash)
    card = ModelCard(model_card(recipe, results, [], base_model="timm/resnet18.a1_in1k", timm_architecture="resnet18"))
    assert card.data.library_name == "timm" and "timm/resnet18" in card.data.tags
    assert card.data.base_model == "timm/resnet18.a1_in1k" and card.data.eval_results is None
    assert "timm.create_model" in card.text and "starting from `timm/resnet18.a1_in1k`" in card.text


def test_the_card_and_zoo_runs_say_which_epoch_was_kept_and_how_it_was_trained(tmp_path: Path) -> None:
    from conftest import write_finished_run

    from zoo.runs.table import summary

    recipe = recipes.load(
        RECIPES / "mnist.toml",
        ["train.ema=0.999", "data.mixup=0.2", "data.sampler=balanced", "data.augment=default"],
        check=False,
    )
    results = RunResults(
        state="finished", recipe_hash=recipe.hash, test=TEST, monitor="val_f1", kept="best", kept_epoch=9,
        kept_value=0.97, epochs=12, stopped_early=True, augmentation="no flip",
        reason="stopped early: val_f1 did not improve in 3 evaluation(s); best 0.9700 at epoch 9",
    )  # fmt: skip
    card = model_card(recipe, results, [], base_model=None, timm_architecture=None)
    assert "- weights: the best epoch by val_f1, epoch 9 of 12 (val_f1 0.9700)\n" in card
    assert "- stopped early: val_f1 did not improve in 3 evaluation(s)" in card
    assert "decay 0.999" in card and "MixUp alpha 0.2" in card and "class-balanced sampling" in card
    assert "augmentation (default): no flip" in card
    run = write_finished_run(tmp_path / "run")
    run.write_results(results)
    assert summary(run)["kept"] == "best 9/12 early"


def test_datasets_names_a_hub_dataset_only_when_the_plugin_declares_one() -> None:
    from zoo.plugins import _registry as registry

    recipe = recipes.load(RECIPES / "timm_finetune.toml", check=False)  # image_folder: no Hub dataset
    results = RunResults(state="finished", recipe_hash=recipe.hash, test=TEST)
    card = ModelCard(model_card(recipe, results, [], base_model=None, timm_architecture="resnet18"))
    assert card.data.datasets is None and "image_folder" not in card.content.split("---")[1].split("model-index")[0]
    mnist = registry.get("dataset", "mnist").load()
    assert mnist.hub_dataset == "ylecun/mnist"
    card = ModelCard(model_card(recipe, results, [], None, None, hub_dataset=mnist.hub_dataset))
    assert card.data.datasets == ["ylecun/mnist"]
    assert {result.dataset_type for result in card.data.eval_results} == {"ylecun/mnist"}


@given(st.lists(st.sampled_from(["model.onnx", "model.pt2", "model.torchscript"]), unique=True), st.booleans())
def test_the_exports_section_lists_what_the_folder_holds_however_often_rewritten(files: list, old: bool) -> None:
    recipe = recipes.load(RECIPES / "mnist.toml", check=False)
    card = model_card(recipe, RunResults(state="finished", recipe_hash=recipe.hash, test=TEST), [], None, None)
    if old:  # a card written before the section existed
        card = card.replace(f"{EXPORTS_BEGIN}\n{EXPORTS_END}\n", "")
    rewritten = with_exports(with_exports(card, ["model.onnx", "model.pt2", "model.torchscript"]), files)
    assert with_exports(rewritten, files) == rewritten
    for name in ("model.onnx", "model.pt2", "model.torchscript"):
        assert (f"`{name}`" in rewritten) == (name in files)
    assert rewritten.count(EXPORTS_BEGIN) == 1 and recipe.to_toml() in rewritten
    assert ModelCard(rewritten).data.library_name == "zoo"
