"""registry.json: named weights, validated, added from run folders, looked up by name."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from conftest import RECIPES, assert_user_error, write_finished_run, zoo_command

from zoo.errors import ZooError
from zoo.sharing import registry as catalog


def test_registry_check_and_recipe_only_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "registry.json"
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    entry = {
        "backbone": "mnist_cnn",
        "num_classes": 5,
        "label_names": list("01234"),
        "sources": {"recipe": str(RECIPES / "mnist_pretrain.toml")},
    }
    registry.write_text(json.dumps({"schema": 2, "weights": {"digits": entry}}))
    assert "1 named weights, valid" in zoo_command("registry", "check").stdout
    assert_user_error(zoo_command("pull", "digits"), "no Hub source", "recipe:")
    assert_user_error(zoo_command("pull", "digitz"), "no weights named 'digitz'", "'digits'")
    pins = {name: {"sha256": "0" * 64, "size": 1} for name in ("model.safetensors", "config.json")}
    moving = {**entry, "sources": {"hub": {"repo": "a/b", "revision": "main", "files": pins}}}
    registry.write_text(json.dumps({"schema": 2, "weights": {"digits": moving}}))
    assert_user_error(zoo_command("registry", "check"), "weights.digits.sources.hub.revision")
    registry.write_text(json.dumps({"schema": 2, "weights": {"digits": {**entry, "num_classes": 4}}}))
    assert_user_error(zoo_command("registry", "check"), "label_names has 5 names for num_classes = 4")
    registry.write_text(
        json.dumps({"schema": 2, "weights": {"digits": {**entry, "sources": {"recipe": "missing.toml"}}}})
    )
    assert_user_error(zoo_command("registry", "check"), "missing.toml not found")


def test_the_shipped_registry_is_valid() -> None:
    result = zoo_command("registry", "check", env={"ZOO_REGISTRY": str(RECIPES.parent / "registry.json")})
    assert result.returncode == 0, result.stderr


def test_add_records_a_run_by_its_recipe_and_keeps_other_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "team" / "registry.json"))
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "registry.json").write_text('{"schema": 2, "weights": {}}')
    run = write_finished_run(tmp_path / "run")
    with pytest.raises(ZooError, match="was never pushed .*zoo push"):
        catalog.add(run.path, "digits")
    first = catalog.add(run.path, "digits", recipe=RECIPES / "mnist.toml")
    catalog.add(run.path, "digits-again", recipe=RECIPES / "mnist.toml")
    assert first.sources.hub is None and first.label_names == ["0", "1"] and first.metrics == {"accuracy": 0.5}
    assert (tmp_path / "team" / first.sources.recipe).resolve() == (RECIPES / "mnist.toml").resolve()  # relative
    stored = json.loads((tmp_path / "team" / "registry.json").read_text())
    assert sorted(stored["weights"]) == ["digits", "digits-again"] and stored["schema"] == 2
    assert catalog.check().weights["digits"] == first
    with pytest.raises(ZooError, match="no weights named 'digts' .*did you mean 'digits'"):
        catalog.entry("digts")


@pytest.mark.parametrize("name", ["../../x", "has space", "org/name", "", ".hidden"])
def test_names_are_names_not_paths(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "registry.json"))
    (tmp_path / "registry.json").write_text('{"schema": 2, "weights": {}}')
    run = write_finished_run(tmp_path / "run")
    with pytest.raises(ZooError, match="a name is letters, digits"):
        catalog.add(run.path, name, recipe=RECIPES / "mnist.toml")
    with pytest.raises(ZooError, match="no such recipe file"):
        catalog.add(run.path, "fine", recipe=tmp_path / "missing.toml")
    assert json.loads((tmp_path / "registry.json").read_text())["weights"] == {}


def test_several_registries_are_searched_in_order_and_the_first_local_one_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "mine" / "registry.json", tmp_path / "team" / "registry.json"
    for file in (first, second):
        file.parent.mkdir()
        (file.parent / "digits.toml").write_text((RECIPES / "mnist.toml").read_text())
    entry = {"backbone": "mnist_cnn", "num_classes": 2, "label_names": ["0", "1"], "sources": {"recipe": "digits.toml"}}
    first.write_text(json.dumps({"schema": 2, "weights": {"shared": entry}}))
    second.write_text(json.dumps({"schema": 2, "weights": {"shared": {**entry, "description": "team"}, "team": entry}}))
    monkeypatch.setenv("ZOO_REGISTRY", f" {first} , {second} ")
    found = catalog.everything()
    assert sorted(found) == ["shared", "team"]
    assert found["shared"].origin.file == first and found["shared"].entry.description == ""  # the first decides
    assert catalog.find("team").recipe == (second.parent / "digits.toml").resolve()  # relative to its own file
    assert catalog.path() == first
    catalog.add(write_finished_run(tmp_path / "run").path, "mine", recipe=RECIPES / "mnist.toml")
    assert (
        "mine" in json.loads(first.read_text())["weights"] and "mine" not in json.loads(second.read_text())["weights"]
    )
    with pytest.raises(ZooError, match="already names 'team'.*--replace"):
        monkeypatch.setenv("ZOO_REGISTRY", f"{second},{first}")
        catalog.check_addable("team", replace=False)
    catalog.check_addable("team", replace=True)
    monkeypatch.setenv("ZOO_REGISTRY", f"{first},{tmp_path / 'gone.json'}")
    with pytest.raises(ZooError, match="gone.json, which does not exist"):
        catalog.everything()
    monkeypatch.setenv("ZOO_REGISTRY", "hf-hub:not a repo")
    with pytest.raises(ZooError, match="ZOO_REGISTRY"):
        catalog.everything()


@pytest.mark.parametrize(
    ("kind", "refusal"),
    [
        ("folder", "is a folder; it should be a file"),
        ("fifo", "is a FIFO"),
        ("/dev/zero", "is a device"),
        ("huge sparse", "is 17,179,869,184 bytes: too large"),
        ("not UTF-8", "not valid JSON"),
        ("recipe with a NUL byte", "weights.digits.sources.recipe: 'a\\x00b.toml' holds a NUL byte"),
    ],
)
def test_a_registry_file_is_read_only_as_a_regular_file_of_sane_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, refusal: str
) -> None:
    """Once read whole with no checks: a folder was a traceback, a FIFO hung, /dev/zero filled the memory."""
    registry = tmp_path / "registry.json"
    if kind == "folder":
        registry.mkdir()
    elif kind == "fifo":
        os.mkfifo(registry)
    elif kind == "/dev/zero":
        registry.symlink_to("/dev/zero")
    elif kind == "huge sparse":
        with registry.open("wb") as file:
            file.truncate(16 << 30)
    elif kind == "not UTF-8":
        registry.write_bytes(b"\xff\xfe{\x80")
    else:
        sources = {"recipe": "a\0b.toml"}
        entry = {"backbone": "mnist_cnn", "num_classes": 1, "label_names": ["0"], "sources": sources}
        registry.write_text(json.dumps({"schema": 2, "weights": {"digits": entry}}))
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)  # a hang fails the test instead of the suite
    try:
        with pytest.raises(ZooError, match=f"^{re.escape(str(registry))}(: | ){re.escape(refusal)}"):
            catalog.everything()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def hung(signum: int, frame: object) -> None:
    raise TimeoutError("no answer after 30 s")


def test_registry_add_refuses_a_taken_name_unless_replace(tmp_path: Path) -> None:
    """`registry add` once repointed a taken name without a word, where `publish` refused it."""
    registry = tmp_path / "registry.json"
    registry.write_text('{"schema": 2, "weights": {}}')
    env = {"ZOO_REGISTRY": str(registry)}
    first, second = write_finished_run(tmp_path / "d1").path, write_finished_run(tmp_path / "d2").path
    added = zoo_command(
        "registry", "add", str(first), "--name", "digits", "--recipe", str(RECIPES / "mnist.toml"), env=env
    )
    assert added.returncode == 0, added.stderr
    before = registry.read_bytes()
    again = ["registry", "add", str(second), "--name", "digits", "--recipe", str(RECIPES / "mnist_pretrain.toml")]
    assert_user_error(zoo_command(*again, env=env), str(registry), "already names 'digits'", "--replace")
    assert registry.read_bytes() == before
    assert zoo_command(*again, "--replace", env=env).returncode == 0
    assert json.loads(registry.read_text())["weights"]["digits"]["sources"]["recipe"].endswith("mnist_pretrain.toml")


def test_a_recipe_added_through_a_symlinked_registry_is_found_through_the_link_and_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add wrote the path relative to the link's target while check and lookups read it relative to the link."""
    team = tmp_path / "team" / "registry.json"
    team.parent.mkdir()
    team.write_text('{"schema": 2, "weights": {}}')
    project = tmp_path / "proj" / "sub"
    (project / "recipes").mkdir(parents=True)
    recipe = project / "recipes" / "x.toml"
    recipe.write_text((RECIPES / "mnist.toml").read_text())
    (project / "registry.json").symlink_to(team)
    run = write_finished_run(tmp_path / "run").path
    env = {"ZOO_REGISTRY": "registry.json"}
    added = zoo_command(
        "registry", "add", str(run), "--name", "viarecipe", "--recipe", "recipes/x.toml", env=env, cwd=project
    )
    assert added.returncode == 0, added.stderr
    assert (project / "registry.json").is_symlink()  # written through, as before
    checked = zoo_command("registry", "check", env=env, cwd=project)
    assert checked.returncode == 0 and "1 named weights, valid" in checked.stdout, checked.stderr
    for registry in (str(project / "registry.json"), str(team)):  # the link and the file it points at agree
        monkeypatch.setenv("ZOO_REGISTRY", registry)
        assert catalog.find("viarecipe").recipe == recipe.resolve()
        assert "viarecipe" in catalog.check().weights
