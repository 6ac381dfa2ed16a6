"""Whole recipes end to end on small MNIST subsets, as `zoo run` runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, REPO, assert_user_error, sabotaged_loss, write_finished_run, write_source_recipes
from multilabel_data import shapes_canvas
from PIL import Image
from safetensors import safe_open

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.data.batches import Batches
from zoo.data.splits import load_splits
from zoo.errors import ZooError
from zoo.inference.evaluate import evaluate
from zoo.runs.folder import RunFolder, RunResults
from zoo.training.runner import run
from zoo.training.setup import build_run, print_setup

# Small enough for seconds on 2 cores: 20 training images a class, two classes.
TINY = ["data.per_class=20", "data.val_split=0.02", "train.epochs=1"]
PRETRAIN = [*TINY, "data.classes=[0,1]", "data.batch_size=10", "train.epochs=3"]
FINETUNE = [*TINY, "data.classes=[5,6]", "train.epochs=2"]


def zoo_run(*args: str) -> tuple[str, Path]:
    result = CliRunner().invoke(cli, ["run", *args, "--no-progress"])
    assert result.exit_code == 0, result.output + result.stderr
    folder = Path(result.stdout.strip().splitlines()[-1].split("run folder: ")[1].split(" (")[0])
    return result.stdout, folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A run folder of mnist_pretrain.toml on a small subset, shared by this module's tests."""
    folder = tmp_path_factory.mktemp("pretrained") / "run"
    recipe = recipes.load(RECIPES / "mnist_pretrain.toml", [*PRETRAIN, f"output.dir={folder}"])
    assert run(recipe, progress=False).results.state == "finished"
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return RunFolder(folder).weights()


def test_run_folder_holds_every_file(pretrained: Path) -> None:
    for name in ("model.safetensors", "config.json", "recipe.toml", "metrics.jsonl", "results.json", "README.md"):
        assert (pretrained / name).is_file(), name
    config = json.loads((pretrained / "config.json").read_text())
    assert config["architecture"] == "mnist_cnn"
    assert (config["num_classes"], config["num_features"], config["label_names"]) == (2, 128, ["0", "1"])
    assert config["pretrained_cfg"]["mean"] == [0.1307] and config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    results = json.loads((pretrained / "results.json").read_text())
    assert results["state"] == "finished"
    assert set(results["test"]) >= {"accuracy", "precision", "recall", "f1", "per_class", "confusion_matrix"}
    assert results["test"]["accuracy"] > 0.9  # 0 vs 1 is easy even from 40 images
    assert config["zoo"]["recipe_hash"] == results["recipe_hash"]
    with safe_open(str(pretrained / "model.safetensors"), "pt") as file:
        metadata = file.metadata()
    assert json.loads(metadata["label_names"]) == ["0", "1"]
    assert metadata["recipe_hash"] == results["recipe_hash"]
    epochs = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and "val_accuracy" in epochs[0]
    assert not list(pretrained.glob(".*.tmp"))


def test_load_round_trip_reproduces_the_test_metrics(pretrained: Path, mnist_dir: Path) -> None:
    model = zoo.load(pretrained)
    labels = model.label_names
    assert labels == ["0", "1"] and not model.training
    recipe = recipes.from_dict(json.loads((pretrained / "config.json").read_text())["zoo"]["recipe"])
    splits = load_splits(recipe.data, recipe.train.seed)
    batches = Batches(splits.test, 256, torch.device("cpu"), RunFolder(pretrained).preprocessing)
    metrics = evaluate(model, batches, torch.nn.CrossEntropyLoss(), labels, None)
    saved = json.loads((pretrained / "results.json").read_text())["test"]
    assert metrics["accuracy"] == saved["accuracy"]
    assert metrics["confusion_matrix"] == saved["confusion_matrix"]


def test_finetune_freezes_convs_and_puts_a_new_head(pretrained: Path) -> None:
    output, folder = zoo_run(str(RECIPES / "mnist_finetune.toml"), *FINETUNE, f"model.pretrained={pretrained}")
    assert "new head for 2 classes (5, 6)" in output
    assert "test: accuracy" in output and "confusion matrix" in output
    before, after = weights(pretrained), weights(folder)
    for name in ("backbone.conv1.weight", "backbone.conv1.bias", "backbone.conv2.weight", "backbone.conv2.bias"):
        assert torch.equal(before[name], after[name]), f"{name} is frozen but changed"
    assert not torch.equal(before["backbone.fc1.weight"], after["backbone.fc1.weight"])


@pytest.mark.parametrize(
    ("policy", "frozen", "trained"),
    [
        (["model.freeze.freeze=backbone"], ["conv1", "conv2", "fc1"], []),
        (["model.freeze.freeze=backbone", 'model.freeze.unfreeze=["fc1.*"]'], ["conv1", "conv2"], ["fc1"]),
        (["model.freeze.freeze=['backbone.conv*']"], ["conv1", "conv2"], ["fc1"]),
        (
            ["model.freeze.freeze=backbone", "model.freeze.stages=[{epoch=2, unfreeze=['conv2.*'], lr_mult=0.1}]"],
            ["conv1", "fc1"],
            ["conv2"],
        ),
        (
            ["model.freeze.freeze=backbone", "model.freeze.stages=[{epoch=3, unfreeze=['conv2.*']}]"],
            ["conv1", "conv2", "fc1"],
            [],
        ),
    ],
    ids=["backbone", "unfreeze-exception", "glob-with-prefix", "stage-reached", "stage-not-reached"],
)
def test_freezing_policies(pretrained: Path, policy: list[str], frozen: list[str], trained: list[str]) -> None:
    _, folder = zoo_run(
        str(RECIPES / "mnist_finetune.toml"),
        *FINETUNE,
        f"model.pretrained={pretrained}",
        "model.freeze.unfreeze=[]",
        "train.keep=last",  # the weights after the stage, whichever epoch validated best
        *policy,
    )
    before, after = weights(pretrained), weights(folder)
    for layer in frozen:
        assert torch.equal(before[f"backbone.{layer}.weight"], after[f"backbone.{layer}.weight"]), layer
    for layer in trained:
        assert not torch.equal(before[f"backbone.{layer}.weight"], after[f"backbone.{layer}.weight"]), layer


def test_recipe_source_runs_once_then_comes_from_the_cache(tmp_path: Path, mnist_dir: Path) -> None:
    write_source_recipes(tmp_path, "tiny_pretrain", "tiny_finetune", per_class=10, val_split=0.02)
    source_hash = recipes.load(tmp_path / "tiny_pretrain.toml").hash[:12]
    stale = tmp_path / "cache" / "runs" / f".tiny_pretrain-{source_hash}.killed"  # a pretraining killed earlier
    stale.mkdir(parents=True)
    first, _ = zoo_run("tiny_finetune.toml")
    assert not stale.exists()
    assert "running tiny_pretrain.toml first" in first
    cached = [p for p in (tmp_path / "cache" / "runs").iterdir() if not p.name.startswith(".")]  # not the lock
    assert len(cached) == 1 and cached[0].name.startswith("tiny_pretrain-")
    second, folder = zoo_run("tiny_finetune.toml")
    assert "tiny_pretrain.toml (cached in" in second and "running" not in second
    assert torch.equal(weights(cached[0])["backbone.conv1.weight"], weights(folder)["backbone.conv1.weight"])


def test_mnist_recipe_stops_at_max_steps(mnist_dir: Path) -> None:
    output, folder = zoo_run(
        str(RECIPES / "mnist.toml"), "train.max_steps=3", "data.per_class=10", "data.classes=[3,4]", "data.batch_size=4"
    )
    results = json.loads((folder / "results.json").read_text())
    assert (results["state"], results["steps"], results["epochs"]) == ("finished", 3, 1)
    assert folder.parent == Path("runs") and folder.name.startswith("mnist-")


def test_runs_are_reproducible_and_never_overwrite(mnist_dir: Path) -> None:
    _, first = zoo_run(str(RECIPES / "mnist.toml"), "train.max_steps=4", "data.per_class=10", "data.classes=[3,4]")
    _, second = zoo_run(str(RECIPES / "mnist.toml"), "train.max_steps=4", "data.per_class=10", "data.classes=[3,4]")
    assert first != second
    first_weights, second_weights = weights(first), weights(second)
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[name], second_weights[name]) for name in first_weights)


def test_dry_run_prints_groups_and_writes_nothing(mnist_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), "--dry-run", "optim.backbone_lr_mult=0.1"])
    assert result.exit_code == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.split()}
    assert lines["head"] == ["2", "1,290", "0.005"]
    assert lines["backbone"] == ["6", "1,198,592", "0.0005"]
    assert lines["frozen"][:2] == ["0", "0"]
    assert not (tmp_path / "runs").exists()


def test_interrupted_run_leaves_a_usable_folder(mnist_dir: Path, tmp_path: Path) -> None:
    def interrupt_third_step(call: int, loss: torch.Tensor) -> torch.Tensor:
        if call == 3:
            raise KeyboardInterrupt
        return loss

    with sabotaged_loss("interrupting", interrupt_third_step):
        recipe = recipes.load(
            RECIPES / "mnist.toml",
            [
                "loss.name=interrupting",
                "data.per_class=50",
                "data.classes=[0,1]",
                "data.batch_size=10",
                "data.val_split=0.2",
                f"output.dir={tmp_path / 'out'}",
            ],
        )
        result = run(recipe, progress=False)
    assert result.results.state == "interrupted"
    assert "Ctrl-C" in result.results.reason
    # Stopped before the first validation: no best epoch, so the weights kept are the last, and said so.
    assert (result.results.kept, result.results.kept_epoch, result.results.kept_value) == ("last", None, None)
    model = zoo.load(tmp_path / "out")
    labels = model.label_names
    assert labels == ["0", "1"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.per_class=6000"], "data.per_class = 6000, but class '0' has only"),
        (["data.classes=[12]"], "data.classes: 12 is out of range"),
        (["data.classes=['seven']"], "data.classes: no class named 'seven'"),
        (["data.classes=[]"], "data.classes is empty"),
        (["model.head.num_classes=3", "data.classes=[1,2]"], "model.head.num_classes = 3, but data.classes selects 2"),
        (["model.pretrained=no/such/run"], "model.pretrained: folder not found"),
        (["model.freeze.freeze=['conv9.*']"], "pattern 'conv9.*' matches no parameter"),
        (["model.freeze.freeze=['*']"], "freezes every parameter"),
        (["model.args.image_size=4"], "model.args: mnist_cnn rejected its arguments"),
        (["train.device=cuda"], "train.device = 'cuda', but this machine has no CUDA"),
    ],
)
def test_bad_run_inputs_are_one_line_exit_2_and_write_nothing(
    overrides: list[str], expected: str, mnist_dir: Path
) -> None:
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), *overrides])
    assert_user_error(result, expected)
    assert not Path("runs").exists()


def test_corrupted_pretrained_run_is_refused(pretrained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pretrained, copy)
    weights_file = copy / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    result = CliRunner().invoke(
        cli, ["run", str(RECIPES / "mnist_finetune.toml"), *FINETUNE, f"model.pretrained={copy}"]
    )
    assert_user_error(result, "model.safetensors is corrupted")
    assert not Path("runs").exists()


def test_pretrained_of_another_shape_names_the_tensor(pretrained: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(RECIPES / "mnist_finetune.toml"),
            "--dry-run",
            f"model.pretrained={pretrained}",
            "model.args.hidden=64",
        ],
    )
    assert_user_error(result, "backbone tensor 'fc1.bias' is [128]", "but [64] here")


def test_output_folder_holding_a_run_is_refused(pretrained: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), f"output.dir={pretrained}"])
    assert_user_error(result, "already holds a run")


def test_resuming_a_run_with_no_checkpoint_says_how_to_start_it_again(mnist_dir: Path, tmp_path: Path) -> None:
    failed = write_finished_run(tmp_path / "run")
    failed.write_results(RunResults(state="failed", recipe_hash="abc", reason="a truncated image at step 1"))
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), "--resume", str(failed.path)])
    assert_user_error(result, "has no checkpoint yet", "another output.dir", f"remove {failed.path} first")


def test_an_existing_folder_with_other_files_is_never_written_into(mnist_dir: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    (project / "config.json").write_text("{}")
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), *TINY, f"output.dir={project}"])
    assert_user_error(result, "is a folder with other files in it")
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "config.json"]
    assert (project / "README.md").read_text() == "my project"


def test_missing_mnist_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "nodata"))
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), "--dry-run"])
    assert_user_error(result, f"MNIST not found in {tmp_path / 'nodata' / 'MNIST' / 'raw'}", "ZOO_DATA_DIR")


OPTION_RUN = ["data.per_class=8", "data.classes=[0,1]", "data.batch_size=4"]  # 16 images: 4 batches an epoch


def spied_run(monkeypatch: pytest.MonkeyPatch, *options: str) -> tuple[dict, Path]:
    """`zoo run` of mnist.toml with ``options``, and what its training did: the trainer; for each
    training loss its logits and value; for each optimiser step the learning rate and whether
    algorithms were deterministic; for each gradient clip the limit and the norms before and after."""
    from zoo.training.loop import Trainer

    seen: dict = {"losses": [], "steps": [], "clips": []}
    init, optimizer_step, clip = Trainer.__init__, Trainer._optimizer_step, torch.nn.utils.clip_grad_norm_

    def spied_init(self: Trainer, *args: object) -> None:
        init(self, *args)
        seen["trainer"], loss_fn = self, self.loss_fn

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            value = loss_fn(logits, targets)
            seen["losses"].append((logits.detach(), targets, value.detach()))
            return value

        self.loss_fn = loss

    def spied_step(self: Trainer) -> None:
        optimizer_step(self)
        lr = self.optimizer.param_groups[0]["lr"]
        seen["steps"].append({"lr": lr, "deterministic": torch.are_deterministic_algorithms_enabled()})

    def spied_clip(parameters: object, max_norm: float, *args: object, **kwargs: object) -> torch.Tensor:
        parameters = list(parameters)
        before = clip(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        seen["clips"].append((max_norm, float(before), float(after)))
        return before

    monkeypatch.setattr(Trainer, "__init__", spied_init)
    monkeypatch.setattr(Trainer, "_optimizer_step", spied_step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spied_clip)
    _, folder = zoo_run(str(RECIPES / "mnist.toml"), *OPTION_RUN, *options)
    assert json.loads((folder / "results.json").read_text())["state"] == "finished"
    return seen, folder


def test_bf16_gradient_accumulation_clipping_and_channels_last_each_take_effect(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ["train.precision=bf16", "train.grad_accum=2", "train.grad_clip=0.01", "train.channels_last=false"]
    seen, _ = spied_run(monkeypatch, *options, "train.max_steps=4")
    assert len(seen["steps"]) == 4 and len(seen["losses"]) == 8  # two batches a step
    assert {logits.dtype for logits, _, _ in seen["losses"]} == {torch.bfloat16}
    assert len(seen["clips"]) == 4 and all(limit == 0.01 for limit, _, _ in seen["clips"])
    assert all(before > 0.01 and after <= 0.01 * 1.001 for _, before, after in seen["clips"])  # each step clipped
    conv2 = seen["trainer"].model.backbone.conv2.weight  # auto would have made it channels-last on the CPU
    assert conv2.is_contiguous() and not conv2.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_auto_is_the_cpus_format_and_changes_no_prediction(
    mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """auto: the model and its batches channels-last on the CPU, where oneDNN is faster in it; the
    format decides how tensors lie in memory, not what the model predicts."""
    setups = {
        setting: build_run(recipes.load(RECIPES / "mnist.toml", [*TINY, "train.precision=fp32",
                                                               f"train.channels_last={setting}"]), progress=False)
        for setting in ("auto", "false")
    }  # fmt: skip
    formats = {setting: setup.memory_format for setting, setup in setups.items()}
    assert formats == {"auto": torch.channels_last, "false": torch.contiguous_format}
    for setting, setup in setups.items():  # the run's setup says which
        print_setup(setup)
        device_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("device: "))
        assert device_line.startswith(
            "device: cpu (fp32, channels-last)" if setting == "auto" else "device: cpu (fp32)"
        )
    for setting, setup in setups.items():
        conv2 = setup.model.backbone.conv2.weight
        assert conv2.is_contiguous(memory_format=formats[setting]) and conv2.is_contiguous() == (setting == "false")
    setups["false"].model.load_state_dict(setups["auto"].model.state_dict())
    tested = {}
    for setting, setup in setups.items():
        test = setup.batches(setup.splits.test)
        tested[setting] = evaluate(setup.model, test, setup.loss_fn, setup.splits.label_names, setup.dtype)
    assert tested["auto"]["confusion_matrix"] == tested["false"]["confusion_matrix"]
    assert tested["auto"]["loss"] == pytest.approx(tested["false"]["loss"], rel=1e-3)


@pytest.mark.parametrize(
    ("setting", "strategy", "world_size", "device", "convolution", "expected"),
    [
        ("auto", "ddp", 1, "cpu", torch.nn.Conv2d, True),
        ("auto", "ddp", 2, "cpu", torch.nn.Conv2d, True),
        ("auto", "fsdp", 1, "cpu", torch.nn.Conv2d, True),  # one process: nothing is sharded
        ("auto", "fsdp", 2, "cpu", torch.nn.Conv2d, False),  # FSDP2 shards contiguous parameters only
        ("auto", "ddp", 1, "cuda", torch.nn.Conv2d, False),
        ("auto", "ddp", 1, "mps", torch.nn.Conv2d, False),
        ("auto", "ddp", 1, "cpu", torch.nn.Conv3d, False),  # a 5-d weight has no channels-last format
        (True, "ddp", 1, "cuda", torch.nn.Conv2d, True),
        (False, "ddp", 1, "cpu", torch.nn.Conv2d, False),
    ],
)
def test_channels_last_follows_the_setting_the_device_the_strategy_and_the_model(
    monkeypatch: pytest.MonkeyPatch,
    setting: bool | str,
    strategy: str,
    world_size: int,
    device: str,
    convolution: type[torch.nn.Module],
    expected: bool,
) -> None:
    from zoo.config.schema import TrainConfig
    from zoo.inference import prepared

    monkeypatch.setattr(prepared.distributed, "world_size", lambda: world_size)
    train = TrainConfig(channels_last=setting, strategy=strategy)
    assert prepared.channels_last(train, torch.device(device), convolution(1, 2, 3)) is expected


def test_channels_last_true_for_a_model_with_a_5d_weight_is_one_line() -> None:
    from zoo.config.schema import TrainConfig
    from zoo.inference import prepared

    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3))
    with pytest.raises(ZooError, match=r"the model's 0\.weight is 5-d, which has no channels-last format"):
        prepared.channels_last(TrainConfig(channels_last=True), torch.device("cpu"), model)


# peft's DoRA views its convolutions' weights as contiguous: a model that runs only in the contiguous format.
DORA_CONV = ["data.classes=[0,1]", "data.per_class=20", 'model.adapter={kind = "dora", target = "conv", r = 2}']


def test_auto_keeps_a_model_that_runs_only_contiguous_contiguous_and_true_says_so(
    mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = build_run(recipes.load(RECIPES / "mnist.toml", DORA_CONV), progress=False)
    assert setup.memory_format == torch.contiguous_format
    assert all(weight.is_contiguous() for weight in setup.model.parameters())
    inputs, _ = next(setup.batches(setup.splits.train, training=True).epoch())
    assert inputs.is_contiguous()
    print_setup(setup)
    assert "channels-last" not in capsys.readouterr().out
    lora = build_run(recipes.load(RECIPES / "mnist.toml", [*DORA_CONV[:2], 'model.adapter={target = "conv", r = 2}']),
                     progress=False)  # fmt: skip
    assert lora.memory_format == torch.channels_last  # LoRA's convolutions take it
    assert not all(weight.is_contiguous() for weight in lora.model.parameters())
    with pytest.raises(ZooError) as refused:
        build_run(recipes.load(RECIPES / "mnist.toml", [*DORA_CONV, "train.channels_last=true"]), progress=False)
    assert str(refused.value).startswith("train.channels_last = true, but model mnist_cnn with its model.adapter runs "
                                         "only in the contiguous memory format (RuntimeError: view size is not "
                                         "compatible")  # fmt: skip
    assert str(refused.value).endswith("leave channels_last out") and "\n" not in str(refused.value)


def test_compile_determinism_sgd_momentum_and_the_step_schedule_each_take_effect(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    options = ["train.compile=true", "train.deterministic=true", "optim.name=sgd", "optim.momentum=0.9"]
    seen, _ = spied_run(monkeypatch, *options, "schedule.name=step", "schedule.gamma=0.5", "optim.lr=0.1")
    trainer = seen["trainer"]
    assert isinstance(trainer.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo compiled the training step
    assert all(step["deterministic"] for step in seen["steps"])
    torch.use_deterministic_algorithms(False)  # a run leaves its setting behind: not for this process's next tests
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.optimizer.param_groups[0]["momentum"] == 0.9
    assert all("momentum_buffer" in state for state in trainer.optimizer.state.values())
    assert [step["lr"] for step in seen["steps"]] == pytest.approx([0.1] * 4 + [0.05] * 4)  # 2 epochs of 4 steps


def test_adadelta_focal_loss_and_an_mlp_head_each_take_effect(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = ["optim.name=adadelta", "optim.lr=1.0", "loss.name=focal", "loss.args={}"]
    seen, folder = spied_run(monkeypatch, *options, "model.head.type=mlp", "model.head.hidden=[32]")
    assert isinstance(seen["trainer"].optimizer, torch.optim.Adadelta)
    assert seen["trainer"].optimizer.param_groups[0]["base_lr"] == 1.0
    for logits, targets, value in seen["losses"]:  # focal loss, gamma 2: below cross-entropy
        p = torch.softmax(logits.float(), 1).gather(1, targets[:, None]).squeeze(1)
        torch.testing.assert_close(value, (-((1 - p) ** 2) * p.log()).mean(), rtol=1e-3, atol=1e-5)
        assert value < torch.nn.functional.cross_entropy(logits.float(), targets)
    shapes = {name: tuple(tensor.shape) for name, tensor in weights(folder).items() if name.startswith("head.")}
    assert shapes == {"head.0.weight": (32, 128), "head.0.bias": (32,), "head.2.weight": (2, 32), "head.2.bias": (2,)}


@pytest.mark.parametrize(("sent", "said"), [("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_cleanly_with_exit_130(sent: str, said: str, mnist_dir: Path, tmp_path: Path) -> None:
    """SIGTERM, as a scheduler sends at a time limit, saves the run folder as Ctrl-C does."""
    import signal
    import subprocess
    import sys
    import time

    command = [
        str(Path(sys.executable).with_name("zoo")),
        "run",
        str(RECIPES / "mnist.toml"),
        f"output.dir={tmp_path / 'run'}",
        "--no-progress",
    ]
    # A shell may start background jobs with SIGINT ignored; the user's terminal does not.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    for line in process.stdout:
        if line.startswith("run folder:"):
            break
    time.sleep(2)  # into the first epoch of 60,000 images
    process.send_signal(getattr(signal, sent))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {said} in epoch 1" in stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["state"] == "interrupted" and "test" not in results
    model = zoo.load(tmp_path / "run")
    labels = model.label_names
    assert len(labels) == 10


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=1e30", "optim.lr"),
        ("optim.betas=[0.9, nan]", "optim.betas"),
        ("train.seed=5000000000", "train.seed"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.args.kernel_size=0", "kernel_size"),
        ("model.args.dropout1=nan", "model.args.dropout1"),
        ("name='../../escape'", "name"),
        ("name=/abs/run", "name"),
        ("name='run*'", "name"),
    ],
)
def test_absurd_or_unsafe_values_are_refused_before_anything_runs(override: str, key: str, mnist_dir: Path) -> None:
    assert_user_error(CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), override]), key)
    assert not Path("runs").exists() and not Path("/abs").exists()


class NanGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward (the weights do not)."""

    @staticmethod
    def forward(ctx: object, loss: torch.Tensor) -> torch.Tensor:
        return loss.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


def test_nan_weights_with_a_finite_loss_never_finish(mnist_dir: Path, tmp_path: Path) -> None:
    # The last step's gradient is NaN: every loss was finite, but the weights the run would keep are not.
    with sabotaged_loss("nan_grad_at_3", lambda call, loss: NanGradient.apply(loss) if call == 3 else loss):
        result = CliRunner().invoke(
            cli,
            ["run", str(RECIPES / "mnist.toml"), *TINY, "train.max_steps=3", "data.batch_size=8",
             "loss.name=nan_grad_at_3", f"output.dir={tmp_path / 'run'}", "--no-progress"],
        )  # fmt: skip
    assert_user_error(result, "the weights became NaN or infinite")
    results = json.loads((tmp_path / "run" / "results.json").read_text())  # strict JSON: it parses
    assert results["state"] == "failed" and "weights became NaN" in results["reason"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("failing", ["weights", "a plot, drawn in a thread"])
def test_a_failed_final_write_is_recorded_as_failed(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def disk_full(*args: object) -> None:
        raise ZooError(
            f"cannot write {args[-1] if failing != 'weights' else 'model.safetensors'}: No space left on device"
        )

    if failing == "weights":
        monkeypatch.setattr(RunFolder, "write_weights", disk_full)
    else:
        from zoo.runs import plots

        monkeypatch.setattr(plots, "_save", disk_full)
    result = CliRunner().invoke(
        cli, ["run", str(RECIPES / "mnist.toml"), *TINY, f"output.dir={tmp_path / 'run'}", "--no-progress"]
    )
    assert_user_error(result, "No space left on device")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["state"] == "failed" and "No space left" in results["reason"]


def test_resume_never_trains_fewer_epochs_than_done(pretrained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pretrained, copy)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((copy / "recipe.toml").read_text())
    result = CliRunner().invoke(cli, ["run", str(recipe), "train.epochs=1", "--resume", str(copy)])
    assert_user_error(result, "has already trained 3 epoch(s)", "can only grow")
    assert "epochs = 3" in (copy / "recipe.toml").read_text()


def test_nan_weights_are_refused_by_eval_and_predict(pretrained: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    copy = tmp_path / "copy"
    shutil.copytree(pretrained, copy)
    tensors = RunFolder(copy).weights()
    tensors["head.0.bias"][0] = float("nan")
    save_file(tensors, str(copy / "model.safetensors"))
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    for command in (["eval", str(copy)], ["predict", str(copy), str(image)]):
        assert_user_error(CliRunner().invoke(cli, command), "holds NaN or infinite values", "head.0.bias")


def test_two_runs_needing_one_recipe_source_at_once_train_it_once(mnist_dir: Path, tmp_path: Path) -> None:
    """The second waits on the cache entry's lock, then finds the first one's pretraining."""
    import subprocess
    import sys

    write_source_recipes(tmp_path, "pre", "fine", per_class=200, val_split=0.02, pre_epochs=2, fine_per_class=10)
    zoo = str(Path(sys.executable).with_name("zoo"))
    runs = [
        subprocess.Popen([zoo, "run", str(tmp_path / "fine.toml"), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum(out.count("running pre.toml first") for out, _ in outputs) == 1
    assert sum(out.count("(cached in") for out, _ in outputs) == 1
    assert len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.mixup=0.2", "loss.name=focal", "loss.args={}"],
            "loss 'focal' takes class indices only; use cross_entropy",
        ),
        (["loss.class_weights=balanced", "loss.name=focal", "loss.args={}"], "loss 'focal' takes no class weights"),
        (["data.cutmix=1.0", "data.batch_size=7"], "batch_size must be even (got 7)"),
        (["train.monitor=val_f1", "data.val_split=0"], "train.monitor = val_f1 needs a validation split"),
        (["train.ema=0.99", "train.strategy=fsdp"], "train.ema keeps a whole copy"),
    ],
)
def test_settings_that_cannot_work_together_are_one_line(overrides: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), *TINY, *overrides, "--dry-run"])
    assert_user_error(result, message)


def canvas_recipe(folder: Path, val_split: float, classes: list[str] | None = None, val: int = 0) -> Path:
    """A recipe training mnist_cnn on shape canvases (tests/multilabel_data.py): label sets, or with
    ``val`` rows one shape an image and a val.csv of disc images only."""
    root = shapes_canvas(folder / "canvas", train=60, test=20, val=val, single=bool(val))
    if val:
        rows = (root / "val.csv").read_text().splitlines()
        (root / "val.csv").write_text("\n".join([rows[0], *(f"{row.split(',')[0]},disc" for row in rows[1:])]))
    selected = f"classes = {json.dumps(classes)}\n" if classes else ""
    recipe = folder / "recipe.toml"
    recipe.write_text(f'name = "canvas"\n[model]\nbackbone = "mnist_cnn"\n[data]\ndataset = "csv"\n'
                      f'root = "{root}"\nval_split = {val_split}\n{selected}[train]\nepochs = 1\n')  # fmt: skip
    return recipe


@pytest.mark.parametrize("case", ["held out of digits", "held out of label sets", "own, of other classes"])
def test_an_empty_validation_split_is_refused_before_training(case: str, mnist_dir: Path, tmp_path: Path) -> None:
    # Nothing to monitor, calibrate or tune thresholds on: an empty split would read as "val loss 0.0000 (best)".
    if case == "held out of digits":  # 0.0001 of 300 images a class rounds to none
        shapes = REPO / "plugins" / "zoo-shapes" / "shapes.toml"
        overrides = ["data.val_split=0.0001", "data.args.samples=600", "train.calibrate=true", "train.epochs=1"]
        result = CliRunner().invoke(cli, ["run", str(shapes), *overrides])
        assert_user_error(result, "data.val_split = 0.0001 holds out 0 images; raise it or set 0")
    elif case == "held out of label sets":  # 0.005 of 60 rows rounds to none
        result = CliRunner().invoke(cli, ["run", str(canvas_recipe(tmp_path, 0.005))])
        assert_user_error(result, "data.val_split = 0.005 holds out 0 images; raise it or set 0")
    else:  # val.csv holds discs only, data.classes selects bars and crosses
        recipe = canvas_recipe(tmp_path, 0.2, ["bar", "cross"], val=10)
        result = CliRunner().invoke(cli, ["run", str(recipe), 'train.monitor="val_loss"'])
        assert_user_error(result, "dataset 'csv': its own validation split holds no image of data.classes")
    assert not (tmp_path / "runs").exists()


def test_a_saved_run_still_evaluates_where_the_val_split_rounds_to_none(pretrained: Path) -> None:
    # Training refuses such a split; evaluating a run's test split never needs its validation split.
    result = CliRunner().invoke(cli, ["eval", str(pretrained), "--data.val_split=0.00005", "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["accuracy"] > 0.9
    empty = CliRunner().invoke(cli, ["eval", str(pretrained), "--data.val_split=0.00005", "--split", "val"])
    assert_user_error(empty, "its val split holds no image of its classes; use --split test")  # not all zeros


def test_class_weights_reach_the_loss_and_results(mnist_dir: Path, tmp_path: Path) -> None:
    recipe = recipes.load(
        RECIPES / "mnist.toml",
        ["data.classes=[0,1]", "data.per_class=[30,10]", "data.val_split=0", "train.epochs=1",
         "loss.class_weights=balanced", "data.sampler=balanced", f"output.dir={tmp_path / 'run'}"],
    )  # fmt: skip
    setup = build_run(recipe, progress=False)
    assert setup.loss_fn.weight.tolist() == pytest.approx([40 / 60, 40 / 20])
    result = run(recipe, progress=False)
    assert result.results.class_weights == pytest.approx([40 / 60, 40 / 20])


def test_a_plot_that_fails_while_the_run_fails_too_is_said_not_lost(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.runs import plots

    def broken(*args: object) -> None:
        raise RuntimeError("the plot broke")

    def disk_full(self: RunFolder, *args: object) -> None:
        raise ZooError("cannot write model.safetensors: No space left on device")

    monkeypatch.setattr(plots, "_save", broken)
    monkeypatch.setattr(RunFolder, "write_weights", disk_full)
    with pytest.raises(ZooError, match="No space left") as raised:
        run(recipes.load(RECIPES / "mnist.toml", [*TINY, f"output.dir={tmp_path / 'run'}"]), progress=False)
    assert "(drawing a plot failed too: RuntimeError: the plot broke)" in raised.value.__notes__


class ContiguousOnly(torch.nn.Module):
    """A backbone whose code needs its convolution's output contiguous (as a custom kernel may)."""

    num_features = 4 * 26 * 26

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        assert features.is_contiguous(), "the kernel below needs a contiguous tensor"
        return torch.relu(features).flatten(1)


class Broken(ContiguousOnly):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: a bug in the model")


def test_auto_falls_back_on_an_assertion_and_a_models_own_bug_is_raised_once_unchained(mnist_dir: Path) -> None:
    from zoo.plugins import _registry as registry

    zoo.register_model("contiguous_only")(ContiguousOnly)
    zoo.register_model("broken")(Broken)
    try:
        small = ["data.classes=[0,1]", "data.per_class=10", "data.batch_size=4"]
        setup = build_run(recipes.load(RECIPES / "mnist.toml", [*small, "model.backbone=contiguous_only"]),
                          progress=False)  # fmt: skip
        assert setup.memory_format == torch.contiguous_format
        with pytest.raises(RuntimeError, match="boom: a bug in the model") as raised:
            build_run(recipes.load(RECIPES / "mnist.toml", [*small, "model.backbone=broken"]), progress=False)
    finally:
        registry.unregister("model", "contiguous_only")
        registry.unregister("model", "broken")
    assert raised.value.__context__ is None and raised.value.__cause__ is None  # one traceback, not two chained
