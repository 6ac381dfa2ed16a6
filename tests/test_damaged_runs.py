"""A finished run folder, damaged one file at a time by hypothesis, given to every command that reads one.

Each of `zoo eval`, `zoo predict`, `zoo run --resume`, `zoo push` (to the local Hub), `zoo registry
add` and `zoo runs` must end in a result (exit 0) or in exit 2 with one line naming the problem:
never a traceback, and never a hang (an alarm fails the example after a minute).

The files zoo keeps for itself beside a run (its lock, the registry's lock, a cache entry's lock)
and registry.json get every hostile kind of file in turn, and the commands that touch each must
also never write outside: a link's target is unchanged afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TOKEN, make_hostile, write_source_recipes
from hub_server import FakeHub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from zoo import _locking as locking
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.training.runner import run

pytestmark = pytest.mark.slow

TINY = ["data.classes=[0,1]", "data.per_class=16", "data.val_split=0.1", "train.epochs=1", "data.batch_size=8"]
SMALL_MODEL = ["model.args.conv1=4", "model.args.conv2=8", "model.args.hidden=16"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("damage") / "run"
    recipe = recipes.load(RECIPES / "mnist.toml", [*TINY, *SMALL_MODEL, f"output.dir={folder}"])
    assert run(recipe, progress=False).results.state == "finished"
    return folder


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def edit_json(path: Path, draw: st.DrawFn) -> None:
    data = json.loads(path.read_text())
    tables = [data] + [value for value in data.values() if isinstance(value, dict)]
    table = draw(st.sampled_from(tables))
    key = draw(st.sampled_from(sorted(table) or ["x"]))
    if draw(st.booleans()):
        table.pop(key, None)
    else:
        table[key] = draw(json_values)
    path.write_text(json.dumps(data))  # NaN and Infinity included, as a careless tool writes them


def edit_toml(path: Path, draw: st.DrawFn) -> None:
    lines = path.read_text().splitlines()
    index = draw(st.integers(0, len(lines) - 1))
    value = draw(st.sampled_from(["nan", "inf", "-1", "1e300", '"x"', "[]", "{a = 1}", "true", "99999999999"]))
    key = lines[index].split("=")[0].strip() if "=" in lines[index] else "extra"
    lines[index] = f"{key} = {value}"
    path.write_text("\n".join(lines) + "\n")


def edit_weights(path: Path, draw: st.DrawFn) -> None:
    tensors = load_file(str(path))
    name = draw(st.sampled_from(sorted(tensors)))
    change = draw(st.sampled_from(["drop", "transpose", "extra", "nan", "shrink"]))
    if change == "drop":
        del tensors[name]
    elif change == "transpose" and tensors[name].dim() >= 2:
        tensors[name] = tensors[name].transpose(0, 1).contiguous()
    elif change == "extra":
        tensors["backbone.extra.weight"] = torch.zeros(3)
    elif change == "nan":
        tensors[name] = tensors[name].clone().fill_(float("nan"))
    else:
        tensors[name] = tensors[name].flatten()[:1].clone()
    save_file(tensors, str(path))


FILES = ["config.json", "results.json", "recipe.toml", "model.safetensors", "hub.json", "checkpoint"]


@st.composite
def damage(draw: st.DrawFn) -> Callable[[Path], str]:
    """A function that damages one file of a run folder, and says what it did."""
    name = draw(st.sampled_from(FILES))
    kind = draw(st.sampled_from(["edit", "edit", "delete", "truncate", "folder", "fifo", "symlink", "garbage"]))
    cut = draw(st.integers(min_value=0, max_value=400))
    garbage = draw(st.binary(max_size=64))

    def apply(folder: Path) -> str:
        path = folder / name
        if name == "checkpoint":
            path = sorted((folder / "checkpoints").glob("step-*"))[-1] / draw(
                st.sampled_from(["state.json", "state.safetensors"])
            )
        if name == "hub.json":
            path.write_text(json.dumps({"repo": "zoo-test/x", "revision": "main", "commit": "0" * 40, "url": "u"}))
        if kind == "edit":
            {".json": edit_json, ".toml": edit_toml, ".safetensors": edit_weights}[path.suffix](path, draw)
        elif kind == "delete":
            path.unlink()
        elif kind == "truncate":
            path.write_bytes(path.read_bytes()[:cut])
        elif kind == "folder":
            path.unlink()
            path.mkdir()
        elif kind == "fifo":
            path.unlink()
            os.mkfifo(path)
        elif kind == "symlink":
            path.unlink()
            path.symlink_to("/etc/hostname" if cut % 2 else folder)
        else:
            path.write_bytes(garbage)
        return f"{kind} {path.relative_to(folder)}"

    return apply


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point huggingface_hub, in this process, at the local Hub."""
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    with FakeHub() as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", server.url)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setenv("HF_TOKEN", TOKEN)
        disable_progress_bars()  # upload bars share stderr with the one error line
        yield
        enable_progress_bars()


def test_an_undamaged_copy_passes_every_command(
    finished: Path, hub_env: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The baseline: without damage every command succeeds, so the property below tests the damage."""
    for command, result in run_commands(finished, tmp_path_factory.mktemp("whole"), lambda folder: "nothing"):
        assert result.exit_code == 0, f"zoo {command[0]}: {result.output}" + "".join(_traceback(result))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(damage=damage())
def test_every_command_survives_a_damaged_run_folder(
    finished: Path, hub_env: None, tmp_path_factory: pytest.TempPathFactory, damage: Callable[[Path], str]
) -> None:
    for command, result in run_commands(finished, tmp_path_factory.mktemp("damaged"), damage):
        said = f"{result.damage}: zoo {' '.join(command[:2])} -> exit {result.exit_code}\n{result.output}"
        assert result.exit_code in (0, 2), said + "".join(_traceback(result))
        if result.exit_code == 2:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("zoo: error: "), said
        assert "Traceback" not in result.output, said


def run_commands(finished: Path, work: Path, damage: Callable[[Path], str]) -> Iterator[tuple[list[str], object]]:
    """Copy the run, damage it, and run each command that reads a run folder on it, in this process."""
    folder = work / "runs" / "run"
    shutil.copytree(finished, folder, symlinks=True)
    recipe_file = work / "recipe.toml"
    recipe_file.write_text((finished / "recipe.toml").read_text())
    image = work / "digit.png"
    Image.new("L", (28, 28), 255).save(image)
    (work / "registry.json").write_text('{"schema": 2, "weights": {}}')
    what = damage(folder)
    commands = [
        ["eval", str(folder)],
        ["predict", str(folder), str(image)],
        ["run", str(recipe_file), "--resume", str(folder), "--no-progress"],
        ["push", str(folder), "--repo", "zoo-test/damaged"],
        ["registry", "add", str(folder), "--name", "damaged", "--recipe", str(recipe_file)],
        ["runs", str(folder.parent)],
    ]
    for command in commands:
        with alarm(60):
            result = CliRunner(env={"ZOO_REGISTRY": str(work / "registry.json")}).invoke(cli, command)
        result.damage = what
        yield command, result


def _traceback(result: object) -> list[str]:
    import traceback

    exception = getattr(result, "exception", None)
    return traceback.format_exception(exception) if exception and not isinstance(exception, SystemExit) else []


HOSTILE = ("link outside", "dangling link", "fifo", "folder", "/dev/zero", "huge sparse", "not UTF-8")
REGULAR = ("huge sparse", "not UTF-8")  # a sidecar lock all the same; as .zoo.lock, a claim being written


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.lstat().st_mode) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("place", [locking.LOCK_NAME, ".registry.json.lock", "registry.json", "cache lock"])
def test_a_hostile_file_where_zoo_keeps_its_own_is_one_line_and_nothing_outside_changes(
    finished: Path, tmp_path: Path, place: str, kind: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.json").write_text('{"precious": true}\n')
    before = snapshot(outside)
    folder = tmp_path / "runs" / "run"
    shutil.copytree(finished, folder, symlinks=True)
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text((finished / "recipe.toml").read_text())
    registry = tmp_path / "registry.json"
    registry.write_text('{"schema": 2, "weights": {}}')
    write_source_recipes(tmp_path, "pre", "fine", per_class=8, val_split=0.0)
    pre = recipes.load(tmp_path / "pre.toml")
    add = ["registry", "add", str(folder), "--name", "digits", "--recipe", str(recipe_file)]
    target, commands = {
        locking.LOCK_NAME: (
            folder / locking.LOCK_NAME,
            [["run", str(recipe_file), "--resume", str(folder), "--no-progress"]],
        ),
        ".registry.json.lock": (tmp_path / ".registry.json.lock", [add]),
        "registry.json": (registry, [["registry", "list"], ["registry", "check"], add]),
        "cache lock": (
            recipes.cache_dir() / "runs" / f".{pre.name}-{pre.hash[:12]}.lock",
            [["run", str(tmp_path / "fine.toml"), "--dry-run", "--no-progress"]],
        ),
    }[place]
    target.parent.mkdir(parents=True, exist_ok=True)
    make_hostile(target, kind, outside)
    for command in commands:
        with alarm(60):
            result = CliRunner(env={"ZOO_REGISTRY": str(registry)}).invoke(cli, command)
        said = f"{kind} {place}: zoo {' '.join(command[:2])} -> exit {result.exit_code}\n{result.output}"
        assert result.exit_code in (0, 2), said + "".join(_traceback(result))
        assert "Traceback" not in result.output, said
        if kind in REGULAR and place in (".registry.json.lock", "cache lock"):
            assert result.exit_code == 0, said  # any regular file serves as a sidecar lock
        else:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("zoo: error: "), said
            assert target.name in lines[0], said
    assert snapshot(outside) == before  # nothing written, truncated or created through a link
