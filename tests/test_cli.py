from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, assert_user_error, make_distribution, zoo_command
from hub_server import Blob, Repo


def imported_modules(*args: str) -> set[str]:
    """Modules that `zoo ARGS` imports, from python -X importtime."""
    result = zoo_command(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_help_and_list_import_no_torch_and_no_plugin() -> None:
    for args in (["--help"], ["list"]):
        modules = imported_modules(*args)
        assert "click" in modules
        assert (
            not {"torch", "timm", "torchvision", "mlflow", "wandb", "zoo.models.mnist_cnn", "zoo_shapes.models"}
            & modules
        ), args


def test_an_mnist_run_imports_neither_timm_nor_torchvision(mnist_dir: Path, tmp_path: Path) -> None:
    """Each costs a run seconds of start-up: timm (1.5 s) for timm models, torchvision (2 s) to download MNIST."""
    tiny = ["train.max_steps=1", "data.classes=[0,1]", "data.per_class=64", f"output.dir={tmp_path / 'run'}"]
    modules = imported_modules("run", str(RECIPES / "mnist.toml"), *tiny)
    assert (tmp_path / "run" / "loss.png").is_file()  # a whole run, plots included
    assert "torch" in modules and not {m for m in modules if m.split(".")[0] in ("timm", "torchvision")}


def test_the_zoo_process_freezes_its_heap_before_it_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter's finalisation then skips collecting what torch made (0.8 s of a one-step run)."""
    import gc

    import zoo.cli

    def finished(**_: object) -> None:
        raise SystemExit(0)

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(zoo.cli, "cli", finished)
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit):
            zoo.cli.main()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_data_cache_that_does_nothing_says_so(mnist_dir: Path) -> None:
    tiny = [str(RECIPES / "mnist.toml"), "--dry-run", "data.classes=[0,1]", "data.per_class=8"]
    warned = zoo_command("run", *tiny, "data.cache=disk")
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.splitlines() == [
        "zoo: warning: data.cache = \"disk\" does nothing: the images of dataset 'mnist' are tensors held in "
        "memory already; remove data.cache"
    ]
    assert zoo_command("run", *tiny, "data.cache=none").stderr == ""


def test_version() -> None:
    result = zoo_command("--version")
    assert result.returncode == 0 and result.stdout.startswith("zoo, version ")


def test_list_shows_builtins_with_provider() -> None:
    result = zoo_command("list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:4] for line in result.stdout.splitlines()[1:]}
    assert rows["mnist_cnn"][:2] == ["model", "zoo"]
    assert rows["mnist"][:2] == ["dataset", "zoo"]
    for loss in ("cross_entropy", "nll", "mse", "focal"):
        assert rows[loss][:2] == ["loss", "zoo"]


def test_list_kind_pattern_and_json() -> None:
    result = zoo_command("list", "losses", "*e*", "--json")
    entries = json.loads(result.stdout)
    assert {e["name"] for e in entries} == {"bce", "cross_entropy", "mse"}
    assert {e["kind"] for e in entries} == {"loss"}


def test_info_shows_arguments_defaults_types_and_doc() -> None:
    result = zoo_command("info", "mnist_cnn")
    assert result.returncode == 0, result.stderr
    assert "model, from zoo" in result.stdout
    for argument in (
        "conv1: int = 32",
        "conv2: int = 64",
        "hidden: int = 128",
        "dropout1: float = 0.25",
        "dropout2: float = 0.5",
    ):
        assert argument in result.stdout
    assert "Classic PyTorch MNIST CNN" in result.stdout


def test_unknown_name_is_one_line_with_suggestion() -> None:
    assert_user_error(zoo_command("info", "nosuchmodel"), "unknown model 'nosuchmodel'")
    assert_user_error(zoo_command("info", "mnist_cnm"), "did you mean 'mnist_cnn'")


def test_library_chatter_stays_out_of_the_error_line_and_shows_with_verbose(hub, tmp_path: Path) -> None:
    """With HF_HUB_CACHE a file, huggingface_hub logs "Ignored error while writing ..." before the pull
    fails: without --verbose the user sees zoo's one line only; with it, the library's lines come first."""
    server, env = hub
    repo = server.state.repos.setdefault("zoo-test/digits", Repo())
    server.state.new_commit(repo, {"config.json": Blob(b"{}", False), "model.safetensors": Blob(b"x", True)}, "main")
    (tmp_path / "a-file").write_text("")
    env = {**env, "HF_HUB_CACHE": str(tmp_path / "a-file")}
    quiet = assert_user_error(zoo_command("pull", "zoo-test/digits", env=env), "cannot write the Hugging Face cache")
    verbose = zoo_command("--verbose", "pull", "zoo-test/digits", env=env)
    assert verbose.returncode == 2 and verbose.stderr.splitlines()[-1] == quiet
    assert any(
        "huggingface_hub" in line and "Ignored error while writing" in line for line in verbose.stderr.splitlines()
    )


def test_python_warnings_of_a_library_show_with_verbose_only(tmp_path: Path) -> None:
    chatty = 'import warnings\nwarnings.warn("chatty plugin says hello")\n\ndef net():\n    """Chatty."""\n'
    site = make_distribution(
        tmp_path / "site",
        "chatty-plugin",
        {"zoo.models": {"chatty": "chatty_plugin:net"}},
        {"chatty_plugin.py": chatty},
    )
    env = {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    quiet = zoo_command("info", "chatty", env=env)
    assert quiet.returncode == 0 and "Chatty." in quiet.stdout and quiet.stderr == ""
    verbose = zoo_command("--verbose", "info", "chatty", env=env)
    assert verbose.returncode == 0 and "chatty plugin says hello" in verbose.stderr


def test_broken_plugin_listed_reported_and_strict(broken_site: Path) -> None:
    env = {"PYTHONPATH": str(broken_site)}
    listing = zoo_command("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "broken_net" in listing.stdout and "mnist_cnn" in listing.stdout

    report = zoo_command("plugins", env=env)
    assert report.returncode == 0, report.stderr
    assert "broken-plugin" in report.stdout
    assert "plugin is broken on purpose" in report.stdout
    assert "mnist_cnn" in report.stdout

    for args in (["plugins"], ["list"]):
        assert_user_error(
            zoo_command(*args, env={**env, "ZOO_STRICT_PLUGINS": "1"}), "broken_net", "ZOO_STRICT_PLUGINS"
        )


def test_example_plugin_is_installed_under_its_distribution() -> None:
    entries = {e["name"]: e for e in json.loads(zoo_command("list", "--json").stdout)}
    for name, kind in (("tiny_mlp", "model"), ("shapes", "dataset"), ("poly1", "loss")):
        assert entries[name]["provider"] == "zoo-shapes"
        assert entries[name]["kind"] == kind


def test_python_dash_m_runs_the_same_cli() -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "zoo", "list", "models"], capture_output=True, text=True, check=True)
    assert "mnist_cnn" in result.stdout


@pytest.mark.parametrize("command", ["list", "info", "plugins", "run", "show", "schema"])
def test_every_command_explains_itself(command: str) -> None:
    result = zoo_command(command, "--help")
    assert result.returncode == 0
    assert "Usage: zoo " + command in result.stdout


def test_ctrl_c_outside_training_exits_130_without_click_aborting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every rank would print click's "Aborted!"; the shell's code for Ctrl-C says it all."""
    from click.testing import CliRunner

    from zoo.cli import cli
    from zoo.plugins import _registry as registry

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "plugins", interrupted)
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 130 and "Aborted" not in result.output, result.output
