from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import GOOD_MODULE, RECIPES, assert_user_error, make_distribution

import zoo
from zoo.cli import cli
from zoo.errors import ZooError
from zoo.plugins import _registry as registry


def test_builtins_are_entry_points_of_the_zoo_distribution() -> None:
    found = {(p.kind, p.name): p for p in registry.plugins()}
    for kind, name in [
        ("model", "mnist_cnn"),
        ("dataset", "mnist"),
        *[("loss", n) for n in ("cross_entropy", "nll", "mse", "focal")],
    ]:
        assert found[(kind, name)].provider == "zoo"
        assert found[(kind, name)].description, f"{name} has no description"


def test_listing_imports_no_plugin_module() -> None:
    for module in ["zoo.models.mnist_cnn", "zoo.data.mnist", "zoo.tasks.losses"]:
        sys.modules.pop(module, None)
    assert "mnist_cnn" in zoo.list_models()
    descriptions = [p.description for p in registry.plugins()]
    assert all(descriptions)
    assert not {"zoo.models.mnist_cnn", "zoo.data.mnist", "zoo.tasks.losses"} & set(sys.modules)


def test_create_model_follows_the_backbone_contract() -> None:
    backbone = zoo.create_model("mnist_cnn", conv1=8, conv2=16, hidden=32)
    assert backbone.num_features == 32
    assert backbone(torch.zeros(3, 1, 28, 28)).shape == (3, 32)
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in backbone.modules())


def test_create_loss_and_list_patterns() -> None:
    assert zoo.list_losses("*entropy") == ["cross_entropy"]
    loss = zoo.create_loss("cross_entropy", label_smoothing=0.1)
    assert loss(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item() == pytest.approx(
        torch.log(torch.tensor(3.0)).item()
    )


def test_losses_agree_with_their_definitions() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    targets = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert zoo.create_loss("nll")(logits, targets).item() == pytest.approx(ce.item())
    assert zoo.create_loss("focal", gamma=0.0)(logits, targets).item() == pytest.approx(ce.item())
    assert zoo.create_loss("focal", gamma=2.0)(logits, targets).item() < ce.item()
    probs = logits.softmax(1)
    expected = ((probs - torch.nn.functional.one_hot(targets, 3)) ** 2).mean()
    assert zoo.create_loss("mse")(logits, targets).item() == pytest.approx(expected.item())


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ZooError, match=r"unknown model 'mnist_cn'.*did you mean 'mnist_cnn'"):
        zoo.create_model("mnist_cn")


def test_decorator_registers_in_process() -> None:
    @zoo.register_model("tiny_local")
    def tiny_local(width: int = 4) -> torch.nn.Module:
        """A throwaway backbone."""
        model = torch.nn.Flatten()
        model.num_features = width
        return model

    try:
        assert "tiny_local" in zoo.list_models()
        plugin = registry.get("model", "tiny_local")
        assert (plugin.provider, plugin.description) == ("local", "A throwaway backbone.")
        assert zoo.create_model("tiny_local", width=7).num_features == 7
    finally:
        registry.unregister("model", "tiny_local")
    assert "tiny_local" not in zoo.list_models()


def test_installed_distribution_appears_and_disappears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_distribution(
        tmp_path / "site", "good-plugin", {"zoo.models": {"wide": "good_plugin:wide"}}, GOOD_MODULE
    )
    assert "wide" not in zoo.list_models()
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    plugin = registry.get("model", "wide")
    assert (plugin.provider, plugin.version, plugin.description) == (
        "good-plugin",
        "1.0",
        "A linear backbone from the fake distribution.",
    )
    assert zoo.create_model("wide", width=5)(torch.zeros(2, 3, 4)).shape == (2, 5)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site)])
    registry.refresh()
    assert "wide" not in zoo.list_models()


def test_broken_plugin_is_listed_reported_and_skipped(broken_site: Path) -> None:
    plugin = registry.get("model", "broken_net")
    assert plugin.provider == "broken-plugin"
    assert plugin.description == "Never seen."  # read from source, so listing survives the broken import
    results = {p.name: error for p, error in registry.load_all()}
    assert "plugin is broken on purpose" in str(results["broken_net"])
    assert results["mnist_cnn"] is None
    with pytest.raises(ZooError, match="broken-plugin.*failed to load.*ImportError"):
        zoo.create_model("broken_net")


def test_strict_mode_turns_a_broken_plugin_into_an_error(broken_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    with pytest.raises(registry.PluginLoadError, match="broken_net.*ZOO_STRICT_PLUGINS"):
        registry.load_all()


def test_a_plugin_that_exits_on_import_or_has_no_signature_is_reported_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.exit() in a plugin's module is a broken plugin, not the end of zoo; a builtin such as dict has
    no signature to check a recipe's arguments against. KeyboardInterrupt still stops zoo."""
    modules = {"exiting_plugin.py": "import sys\n\nsys.exit(3)\n", "interrupted_plugin.py": "raise KeyboardInterrupt\n"}
    entry_points = {"zoo.models": {"exiting": "exiting_plugin:net"}, "zoo.losses": {"nosig": "builtins:dict"}}
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "site", "odd-plugins", entry_points, modules)))
    registry.refresh()
    with pytest.raises(KeyboardInterrupt):
        registry.Plugin("model", "interrupted", "odd-plugins", "1.0", "interrupted_plugin:net").load()
    runner = CliRunner()
    listed = runner.invoke(cli, ["plugins"])
    assert listed.exit_code == 0, listed.output
    rows = {
        line.split()[3]: line.split()[-1] for line in listed.stdout.splitlines() if "odd-plugins" in line.split()[:1]
    }
    assert rows["exiting"] == "FAILED" and rows["nosig"] == "FAILED"
    assert "SystemExit(3)" in listed.stdout and "builtins:dict has no signature" in listed.stdout
    assert_user_error(runner.invoke(cli, ["info", "nosig"]), "nosig", "builtins:dict", "no signature")
    dry_run = runner.invoke(cli, ["run", str(RECIPES / "mnist.toml"), "loss.name=nosig", "--dry-run"])
    assert_user_error(dry_run, "loss.name", "no signature")
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    assert_user_error(runner.invoke(cli, ["list"]), "exiting", "SystemExit: 3", "ZOO_STRICT_PLUGINS")


def test_two_providers_of_one_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for dist in ("alpha-models", "beta-models"):
        site = make_distribution(tmp_path / dist, dist, {"zoo.models": {"mnist_cnn": "good_plugin:wide"}}, GOOD_MODULE)
        monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    with pytest.raises(ZooError) as error:
        registry.get("model", "mnist_cnn")
    message = str(error.value)
    for qualified in ("zoo:mnist_cnn", "alpha-models:mnist_cnn", "beta-models:mnist_cnn"):
        assert qualified in message
    assert registry.get("model", "beta-models:mnist_cnn").provider == "beta-models"
    assert zoo.create_model("zoo:mnist_cnn").num_features == 128
    with pytest.raises(ZooError, match="not offered by 'gamma'"):
        registry.get("model", "gamma:mnist_cnn")
