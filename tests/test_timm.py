"""timm backbones end to end, offline: a tiny timm model pretrained by a zoo recipe on MNIST digits
0-4 (PNG files in an image folder), then fine-tuned from that run folder on digits 5-9."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, zoo_command
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.config.model_section import FreezeConfig, ModelConfig
from zoo.config.schema import DataConfig, Recipe
from zoo.data.transforms import image_config
from zoo.errors import ZooError
from zoo.models import freeze
from zoo.models.build import build_model
from zoo.training.runner import run

pytestmark = pytest.mark.slow

ARCH = "test_resnet"  # one of timm's own tiny test models: 0.37M parameters
SMALL = [
    f"model.backbone=timm/{ARCH}",
    "data.image_size=32",
    "data.hflip=0",
    "data.batch_size=16",
    "optim.lr=5e-3",
    "data.num_workers=0",
]
RECIPE = RECIPES / "timm_finetune.toml"


def zoo_in_process(*args: str):
    """The CLI in this process (no interpreter start-up): for commands that fail early or only list."""
    return CliRunner().invoke(cli, list(args))


def timm_recipe(png: Path, folder: Path, *overrides: str) -> Recipe:
    return recipes.load(RECIPE, [*SMALL, f"data.root={png}", f"output.dir={folder}", *overrides])


@pytest.fixture(scope="session")
def pretrained_run(mnist_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet trained from scratch on digits 0-4 (98% test accuracy in a manual run)."""
    folder = tmp_path_factory.mktemp("timm") / "pre"
    recipe = timm_recipe(
        mnist_png, folder, "name=pre", "model.pretrained=false", "model.freeze.freeze=[]", "data.classes=[0,1,2,3,4]",
        "data.augment=false", "train.epochs=8", "train.layer_decay=1.0",
    )  # fmt: skip
    result = run(recipe, progress=False)
    assert result.results.test["accuracy"] > 0.8
    return folder


@pytest.fixture(scope="session")
def finetuned_run(pretrained_run: Path, mnist_png: Path) -> Path:
    """recipes/timm_finetune.toml as a user runs it, from the pretrained run folder, on digits 5-9."""
    folder = pretrained_run.parent / "fine"
    result = zoo_command(
        "run", str(RECIPE), "--no-progress", *SMALL, f"data.root={mnist_png}", f"model.pretrained={pretrained_run}",
        "data.classes=[5,6,7,8,9]", "train.epochs=4", f"output.dir={folder}", env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"loaded backbone from {pretrained_run}; new head for 5 classes (5, 6, 7, 8, 9)" in result.stdout
    return folder


def test_the_namespace_lists_timm_models_and_their_weights() -> None:
    listed = zoo_in_process("list", "models", "timm/resnet1*")
    assert listed.exit_code == 0, listed.output
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert "timm/resnet18" in names and "timm/resnet10t" in names and "mnist_cnn" not in names
    assert all(name.startswith("timm/resnet1") for name in names)
    pretrained = zoo_in_process("list", "models", "timm/resnet18*", "--pretrained").output
    assert "timm/resnet18.a1_in1k" in pretrained and "timm/resnet18 " not in pretrained
    assert zoo.list_models("timm/test_res*") == ["timm/test_resnet"]
    everything = zoo_in_process("list", "models").output
    assert [line.split()[0] for line in everything.splitlines()].count("timm/*") == 1  # one row, not 1,300
    info = zoo_in_process("info", "timm/resnet18").output
    assert "pretrained tags: a1_in1k" in info and "input: 3x224x224" in info
    assert_user_error(zoo_in_process("info", "timm/resnet19"), "unknown model 'timm/resnet19'", "timm/resnet18")
    assert_user_error(zoo_in_process("list", "models", "--pretrained"), "--pretrained", "timm/resnet*")


def test_the_head_is_timm_own_and_swapped_through_its_api(pretrained_run: Path) -> None:
    model, loaded = build_model(ModelConfig(backbone=f"timm/{ARCH}"), ["a", "b", "c"])
    assert loaded is None and model.num_classes == 3 and model.get_classifier().out_features == 3
    assert freeze.head_prefixes(model) == ("fc.",)
    same, loaded = build_model(ModelConfig(backbone=f"timm/{ARCH}", pretrained=str(pretrained_run)), list("01234"))
    assert loaded == f"loaded backbone and head from {pretrained_run}"
    source = load_file(pretrained_run / "model.safetensors")
    assert all(torch.equal(value, source[key]) for key, value in same.state_dict().items())
    other, loaded = build_model(ModelConfig(backbone=f"timm/{ARCH}", pretrained=str(pretrained_run)), list("56789"))
    assert "new head for 5 classes" in loaded
    assert not torch.equal(other.fc.weight, source["fc.weight"]) and torch.equal(
        other.layer4[0].conv1.weight, source["layer4.0.conv1.weight"]
    )
    with pytest.raises(ZooError, match="keeps its own linear classifier"):
        build_model(ModelConfig(backbone=f"timm/{ARCH}", head={"type": "mlp"}), ["a", "b"])


def test_finetuned_run_folder_is_a_timm_model_folder(finetuned_run: Path, pretrained_run: Path) -> None:
    config = json.loads((finetuned_run / "config.json").read_text())
    assert config["architecture"] == ARCH and config["label_names"] == list("56789")
    timm_model = timm.create_model(f"local-dir:{finetuned_run}", pretrained=True).eval()
    zoo_model = zoo.load(finetuned_run)
    labels = zoo_model.label_names
    assert labels == list("56789") and timm_model.pretrained_cfg["label_names"] == labels
    inputs = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(inputs), zoo_model(inputs), rtol=1e-5, atol=1e-5)
    results = json.loads((finetuned_run / "results.json").read_text())
    assert results["state"] == "finished" and results["test"]["accuracy"] > 0.5

    # timm_finetune.toml freezes the stem and the first block: bit-identical to the pretrained run.
    before, after = load_file(pretrained_run / "model.safetensors"), load_file(finetuned_run / "model.safetensors")
    groups = freeze.named_groups(timm_model)
    assert groups["stem"] and groups["blocks.0"] and all(name.startswith("layer1.") for name in groups["blocks.0"])
    for name in groups["stem"] | groups["blocks.0"]:
        assert torch.equal(before[name], after[name]), name
    for name in groups["blocks.3"]:
        assert not torch.equal(before[name], after[name]), name


def test_zoo_eval_and_predict_use_the_model_transforms(finetuned_run: Path, mnist_png: Path) -> None:
    evaluated = zoo_command("eval", str(finetuned_run), "--json")
    stored = json.loads((finetuned_run / "results.json").read_text())["test"]
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(stored["accuracy"])
    sevens = sorted((mnist_png / "test" / "7").glob("*.png"))[:10]
    predicted = json.loads(zoo_command("predict", str(finetuned_run), *map(str, sevens), "--json").stdout)
    assert sum(p["top"][0]["label"] == "7" for p in predicted) >= 5


def test_layer_decay_gives_each_layer_its_rate() -> None:
    model, _ = build_model(ModelConfig(backbone=f"timm/{ARCH}"), ["a", "b"])
    groups = freeze.param_groups(model, lr=0.1, layer_decay=0.5, weight_decay=0.05)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # test_resnet's layers (timm's fine group_matcher): stem, 4 blocks, then the head.
    assert rate_of[id(named["fc.weight"])] == pytest.approx(0.1)
    assert rate_of[id(named["layer4.0.conv1.weight"])] == pytest.approx(0.05)
    assert rate_of[id(named["layer1.0.conv1.weight"])] == pytest.approx(0.1 * 0.5**4)
    assert rate_of[id(named["conv1.0.weight"])] == pytest.approx(0.1 * 0.5**5)
    assert decay_of[id(named["layer1.0.conv1.weight"])] == 0.05 and decay_of[id(named["layer1.0.bn1.bias"])] == 0.0
    assert sorted(rate_of) == sorted(id(p) for p in model.parameters())  # every parameter once

    model.layer1.requires_grad_(False)
    assert all(p.requires_grad for g in freeze.param_groups(model, lr=0.1, layer_decay=0.5) for p in g["params"])
    with pytest.raises(ZooError, match="train.layer_decay and optim.backbone_lr_mult"):
        recipes.load(RECIPE, ["train.layer_decay=0.7", "optim.backbone_lr_mult=0.1"], check=False)


def test_named_groups_and_module_names_freeze_timm_models() -> None:
    convnext, _ = build_model(ModelConfig(backbone="timm/test_convnext"), ["a", "b"])
    groups = freeze.named_groups(convnext)
    assert {"stem", "blocks", "blocks.0", "head", "backbone"} <= set(groups)
    freeze.apply(convnext, FreezeConfig(freeze=["stem", "stages.0", "stages.1"]))
    frozen = {name for name, p in convnext.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in convnext.named_parameters() if n.startswith(("stem.", "stages.0.", "stages.1."))}
    with pytest.raises(ZooError, match=r"pattern 'stages.9' matches no parameter \(groups: backbone, blocks"):
        freeze.apply(convnext, FreezeConfig(freeze=["stages.9"]))


def test_the_data_config_follows_the_model(mnist_png: Path) -> None:
    recipe_data = DataConfig(dataset="image_folder", root=str(mnist_png))

    def config_for(backbone: str, data: DataConfig = recipe_data, **args: object) -> dict:
        model, _ = build_model(ModelConfig(backbone=backbone, args=args), ["a", "b"])
        return image_config(data, model, sample_split=None)

    resnet10t = config_for("timm/resnet10t")
    assert resnet10t["input_size"] == (3, 176, 176) and resnet10t["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert resnet10t["interpolation"] == "bicubic" and resnet10t["crop_pct"] == 0.875
    assert config_for(f"timm/{ARCH}")["input_size"] == (3, 160, 160)
    overridden = config_for(
        "timm/resnet10t",
        recipe_data.model_copy(update={"image_size": [48, 64], "crop_pct": 1.0, "interpolation": "bilinear"}),
    )
    assert (
        overridden["input_size"] == (3, 48, 64)
        and overridden["crop_pct"] == 1.0
        and overridden["interpolation"] == "bilinear"
    )
    gray = config_for("timm/resnet10t", in_chans=1)
    assert gray["input_size"] == (1, 176, 176) and gray["mean"] == pytest.approx((0.449,), abs=1e-3)
    with pytest.raises(ZooError, match="data.mean has 2 values, but the model takes 3 input channel"):
        config_for("timm/resnet10t", recipe_data.model_copy(update={"mean": [0.5, 0.5]}))


def test_grayscale_input_adapts_the_pretrained_stem(pretrained_run: Path, mnist_png: Path, tmp_path: Path) -> None:
    recipe = timm_recipe(
        mnist_png, tmp_path / "gray", f"model.pretrained={pretrained_run}", "model.args.in_chans=1",
        "data.classes=[5,6,7,8,9]", "train.max_steps=2",
    )  # fmt: skip
    result = run(recipe, progress=False)
    stem = load_file(result.folder / "model.safetensors")["conv1.0.weight"]
    source = load_file(pretrained_run / "model.safetensors")["conv1.0.weight"]
    assert stem.shape[1] == 1 and torch.allclose(stem, source.sum(1, keepdim=True))  # timm's in_chans=1 adaptation
    config = json.loads((result.folder / "config.json").read_text())
    assert config["model_args"]["in_chans"] == 1 and config["pretrained_cfg"]["input_size"] == [1, 32, 32]
    timm_model = timm.create_model(f"local-dir:{result.folder}", pretrained=True).eval()
    with torch.no_grad():
        inputs = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(timm_model(inputs), zoo.load(result.folder)(inputs))

    # From that 1-channel run without saying in_chans: timm takes it from the source's model_args,
    # and zoo.load, eval and resume rebuild the same 1-channel model.
    again = timm_recipe(
        mnist_png,
        tmp_path / "again",
        f"model.pretrained={result.folder}",
        "data.classes=[5,6,7,8,9]",
        "train.max_steps=2",
    )
    second = run(again, progress=False)
    with torch.no_grad():
        assert zoo.load(second.folder)(inputs).shape == (2, 5)
    resumed = run(
        again.model_copy(update={"train": again.train.model_copy(update={"max_steps": 4})}),
        progress=False,
        resume=second.folder,
    )
    assert resumed.results.steps == 4


def fake_hub_cache(cache: Path, repo: str, run_folder: Path) -> str:
    """``repo`` in the Hugging Face cache layout (what a download leaves), holding a run folder's files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(run_folder / name, base / "snapshots" / commit / name)
    return commit


@pytest.mark.parametrize(
    "source",
    [
        ["model.pretrained=true"],  # timm's default tag for test_resnet
        [f"model.backbone=timm/{ARCH}.r160_in1k", "model.pretrained=true"],
        ["model.pretrained=hf-hub:zoo-test/digits"],
        ["model.pretrained=hf-hub:zoo-test/digits@0123456789abcdef0123456789abcdef01234567"],
    ],
)
def test_hub_sources_load_from_the_hugging_face_cache_offline(
    source: list[str], pretrained_run: Path, mnist_png: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    fake_hub_cache(cache, f"timm/{ARCH}.r160_in1k", pretrained_run)
    fake_hub_cache(cache, "zoo-test/digits", pretrained_run)
    folder = tmp_path / "run"
    result = zoo_command(
        "run", str(RECIPE), "--no-progress", *SMALL, *source, f"data.root={mnist_png}", "data.classes=[5,6,7,8,9]",
        "train.max_steps=1", f"output.dir={folder}", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "loaded backbone from" in result.stdout and "new head for 5 classes" in result.stdout
    # Frozen stem: exactly the weights in the cache.
    stem = load_file(folder / "model.safetensors")["conv1.0.weight"]
    assert torch.equal(stem, load_file(pretrained_run / "model.safetensors")["conv1.0.weight"])


def test_weights_neither_cached_nor_downloadable_are_one_line(mnist_png: Path, tmp_path: Path) -> None:
    result = zoo_command(
        "run", str(RECIPE), *SMALL, f"data.root={mnist_png}", "model.pretrained=true",
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")},
    )  # fmt: skip
    assert_user_error(result, f"timm/{ARCH}", str(tmp_path / "empty"), "HF_HUB_OFFLINE")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "train" / "3" / "notes.txt").write_text("x"), "notes.txt is not an image"),
        (
            lambda root: (root / "train" / "3" / "broken.png").write_bytes(b"not a png"),
            "broken.png is not a readable image",
        ),
        (lambda root: shutil.rmtree(root / "test"), "has train/ but no test/ folder"),
        (lambda root: (root / "test" / "extra").mkdir(), "class folder(s) ['extra'] that train/ lacks"),
        (lambda root: [shutil.rmtree(p) for p in root.iterdir()], "has no class folders"),
        (lambda root: os.mkfifo(root / "train" / "3" / "pipe.png"), "pipe.png is not a readable image (not a regular"),
    ],
)
def test_bad_image_folders_name_the_file(damage, message: str, mnist_png: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(mnist_png, root)
    damage(root)
    result = zoo_in_process("run", str(RECIPE), *SMALL, f"data.root={root}", "model.pretrained=false", "--dry-run")
    assert_user_error(result, message)


def test_a_linked_folder_in_a_class_is_read_and_a_link_back_up_is_one_line(mnist_png: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(mnist_png, root)
    before = len(zoo.create_dataset("image_folder", root, "train"))
    (root / "train" / "1" / "more").symlink_to(mnist_png / "test" / "1")  # as torchvision's ImageFolder reads it
    linked = zoo.create_dataset("image_folder", root, "train")
    assert len(linked) == before + len(list((mnist_png / "test" / "1").iterdir()))
    assert {label for path, label in linked.samples if "/more/" in path} == {1}
    (root / "train" / "2" / "loop").symlink_to(root / "train" / "2")
    with pytest.raises(ZooError, match="train/2/loop is .*train/2, which is read already: remove the link"):
        zoo.create_dataset("image_folder", root, "train")


def test_an_image_that_fails_to_decode_is_named_from_a_worker(mnist_png: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(mnist_png, root)
    truncated = root / "train" / "4" / "truncated.png"
    truncated.write_bytes(next((root / "train" / "4").glob("*.png")).read_bytes()[:60])  # a header, no pixels
    result = zoo_command(
        "run",
        str(RECIPE),
        "--no-progress",
        *SMALL,
        "data.num_workers=1",
        f"data.root={root}",
        "model.pretrained=false",
        "train.epochs=1",
    )
    assert_user_error(result, "truncated.png is not a readable image")


def test_a_single_folder_is_split_into_train_and_test(mnist_png: Path, tmp_path: Path) -> None:
    root = tmp_path / "flat"
    shutil.copytree(mnist_png / "train", root)
    train = zoo.create_dataset("image_folder", root, "train", test_split=0.25)
    test = zoo.create_dataset("image_folder", root, "test", test_split=0.25)
    assert len(train) == 450 and len(test) == 150 and not set(train.samples) & set(test.samples)
    assert train.classes == [str(d) for d in range(10)] and sorted(set(test.targets)) == list(range(10))
    image, label = train[0]
    assert image.mode == "L" and image.size == (28, 28) and label == 0
    with pytest.raises(ZooError, match="data.mean applies to image datasets"):  # data.image_size resizes tensors
        from zoo.data.splits import load_splits

        load_splits(DataConfig(dataset="mnist", mean=[0.5]), seed=0)


def test_a_pushed_run_folder_loads_with_timm_from_the_hub(hub, finetuned_run: Path, tmp_path: Path) -> None:
    server, env = hub
    pushed = zoo_command("push", str(finetuned_run), "--repo", "zoo-test/timm-digits", env=env)
    assert pushed.returncode == 0, pushed.stderr
    inputs = tmp_path / "inputs.safetensors"
    save_file({"x": torch.randn(4, 3, 32, 32)}, inputs)
    script = (
        "import sys, timm, torch; from safetensors.torch import load_file, save_file\n"
        "model = timm.create_model('hf-hub:zoo-test/timm-digits', pretrained=True).eval()\n"
        "with torch.no_grad(): save_file({'y': model(load_file(sys.argv[1])['x'])}, sys.argv[2])\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(inputs), str(tmp_path / "out.safetensors")],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    zoo_model = zoo.load(finetuned_run)
    with torch.no_grad():
        expected = zoo_model(load_file(inputs)["x"])
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["y"], expected, rtol=1e-5, atol=1e-5)
    card = ModelCard.load(finetuned_run / "README.md")
    assert card.data.library_name == "timm" and "timm.create_model" in card.text


def test_a_plain_timm_model_folder_is_a_pretrained_source(tmp_path: Path) -> None:
    from timm.models import save_for_hf

    source = timm.create_model(ARCH, num_classes=7)
    save_for_hf(source, str(tmp_path / "timm_folder"), safe_serialization=True)  # timm's own export, no zoo in it
    model, loaded = build_model(
        ModelConfig(backbone=f"timm/{ARCH}", pretrained=str(tmp_path / "timm_folder")), ["a", "b"]
    )
    assert loaded.startswith(f"loaded backbone from {tmp_path / 'timm_folder'}; new head for 2 classes")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight) and model.num_classes == 2
    with pytest.raises(ZooError, match="holds a timm 'test_resnet', but the recipe builds 'timm/resnet10t'"):
        build_model(ModelConfig(backbone="timm/resnet10t", pretrained=str(tmp_path / "timm_folder")), ["a", "b"])
