"""Shared fixtures: MNIST through ZOO_DATA_DIR, an isolated cache and cwd, fake plugin distributions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub

import zoo
from zoo.config import recipe as recipes
from zoo.config.recipe import default_data_dir
from zoo.data.mnist import write_image_folder
from zoo.errors import ZooError
from zoo.parallel import device
from zoo.plugins import _registry as registry
from zoo.runs.folder import RunFolder, RunResults

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

# Each test runs in its own folder: a relative ZOO_DATA_DIR means relative to where pytest started.
if os.environ.get("ZOO_DATA_DIR"):
    os.environ["ZOO_DATA_DIR"] = os.path.abspath(os.environ["ZOO_DATA_DIR"])


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test works in its own folder with its own zoo cache, and sees freshly discovered plugins."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ZOO_STRICT_PLUGINS", raising=False)
    # Trackers never reach a network, and keep their stores and settings beside the test's folder, not in it.
    trackers = tmp_path.with_name(tmp_path.name + "-trackers")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trackers / 'mlflow.db'}")
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(trackers / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    trackers.mkdir(exist_ok=True)
    # `zoo run` and `zoo eval` invoked in this process must not retune its malloc for the tests after them.
    monkeypatch.setattr(device, "keep_freed_host_memory", lambda: False)
    monkeypatch.chdir(tmp_path)
    registry.refresh()
    yield tmp_path
    registry.refresh()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST files, found the way users point zoo at them: ZOO_DATA_DIR (else zoo's default)."""
    root = default_data_dir()
    try:
        zoo.create_dataset("mnist", root, "test")
    except ZooError as exc:
        pytest.fail(f"these tests need MNIST: {exc}")
    return root


@pytest.fixture(scope="session")
def mnist_png(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST as PNG files in torchvision's ImageFolder layout: 60 training and 30 test images per digit."""
    return write_image_folder(mnist_dir, tmp_path_factory.mktemp("mnist_png"), {"train": 60, "test": 30})


TOKEN = "hf_zooTestSecretToken0123456789abcdef"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[FakeHub, dict[str, str]]]:
    """The server, and the environment that points the `zoo` command at it with a token and an empty cache."""
    with FakeHub() as server:
        env = {
            "HF_ENDPOINT": server.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # pulls show a bar on stderr; the tests read stderr as one line
        }
        yield server, env


def make_distribution(
    site: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str], version: str = "1.0"
) -> Path:
    """An installed distribution as importlib.metadata sees one: a dist-info folder plus modules."""
    site.mkdir(parents=True, exist_ok=True)
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = "".join(
        f"[{group}]\n" + "".join(f"{ep} = {target}\n" for ep, target in eps.items()) + "\n"
        for group, eps in entry_points.items()
    )
    (dist_info / "entry_points.txt").write_text(groups)
    for filename, source in modules.items():
        (site / filename).write_text(textwrap.dedent(source))
    return site


BROKEN_MODULE = {
    "broken_plugin.py": 'def net():\n    """Never seen."""\n\nraise ImportError("plugin is broken on purpose")\n'
}
GOOD_MODULE = {
    "good_plugin.py": '''
    from torch import nn

    def wide(width: int = 8):
        """A linear backbone from the fake distribution."""
        model = nn.Sequential(nn.Flatten(), nn.LazyLinear(width))
        model.num_features = width
        return model
    '''
}


@pytest.fixture
def broken_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A distribution 'broken-plugin' whose model module raises on import, on sys.path."""
    site = make_distribution(
        tmp_path / "site", "broken-plugin", {"zoo.models": {"broken_net": "broken_plugin:net"}}, BROKEN_MODULE
    )
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    return site


def dataset_root(name: str, mnist_png: Path, folder: Path) -> Path:
    """Where each built-in dataset finds a little data: MNIST's files, its digits as PNGs (image_folder, and hf
    reading them as an imagefolder), a canvas of shapes listed in CSV files, one shape each (csv)."""
    if name == "csv":
        from multilabel_data import shapes_canvas

        return shapes_canvas(folder / "canvas", train=48, test=12, single=True)
    return mnist_png if name in ("image_folder", "hf") else default_data_dir()


def zoo_command(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `zoo` as a user would, in a subprocess."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("zoo")), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


def assert_user_error(result: subprocess.CompletedProcess | object, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr naming every fragment, no traceback."""
    code = getattr(result, "returncode", getattr(result, "exit_code", None))
    stderr = result.stderr
    assert code == 2, f"exit {code}\nstdout: {result.stdout}\nstderr: {stderr}"
    assert "Traceback" not in stderr + result.stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextmanager
def sabotaged_loss(name: str, sabotage: Callable[[int, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """A cross-entropy loss plugin whose n-th training call (counting from 1) returns sabotage(n, loss)."""
    calls = []

    class SabotagedLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = super().forward(logits, targets)
            if not torch.is_grad_enabled():  # evaluation passes do not count
                return loss
            calls.append(1)
            return sabotage(len(calls), loss)

    zoo.register_loss(name)(SabotagedLoss)
    try:
        yield
    finally:
        registry.unregister("loss", name)


def write_finished_run(folder: Path) -> RunFolder:
    """A run folder with the files a finished run of mnist.toml writes, without training."""
    run = RunFolder(folder)
    run.write_recipe(recipes.load(RECIPES / "mnist.toml", [f"output.dir={folder}"], check=False))
    run.write_config(
        {
            "architecture": "mnist_cnn",
            "num_classes": 2,
            "label_names": ["0", "1"],
            "pretrained_cfg": {"input_size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]},
            "zoo": {},
        }
    )
    run.write_results(RunResults(state="finished", recipe_hash="abc", test={"accuracy": 0.5}))
    return run


def tagged_processes(tag: str) -> list[int]:
    """The processes whose environment holds ``tag`` (a job's launcher, its ranks and their workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and tag.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def assert_job_ends(tag: str, within: float = 15.0) -> None:
    """Every process of the job tagged ``tag`` is gone within ``within`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in tagged_processes(tag) if process_state(pid) not in ("Z", "X", None)]
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes of the job outlived it: {alive}"
        time.sleep(0.1)


def dead_pid() -> int:
    """The pid of a process that has ended and been collected."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def process_state(pid: int) -> str | None:
    """The state letter /proc gives ``pid`` ("R", "S", "Z" for a zombie ...); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def kill_then_resume(tmp_path: Path, args: list[str], checkpoint_name: str, nproc: int = 1) -> None:
    """A run whose launcher is killed (its process group: ``zoo`` and torchrun, not the ranks, which
    torchrun starts in sessions of their own) once ``checkpoint_name`` is written leaves no process
    behind, and resumed at once ends bit-identical to the same run uninterrupted."""
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    zoo_run = [str(Path(sys.executable).with_name("zoo")), "run", *launch, *args, "--no-progress"]
    whole = subprocess.run([*zoo_run, f"output.dir={tmp_path / 'whole'}"], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    folder = tmp_path / "killed"
    tag = f"ZOO_TEST_JOB={folder}"
    process = subprocess.Popen(
        [*zoo_run, f"output.dir={folder}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "ZOO_TEST_JOB": str(folder)},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (folder / "checkpoints" / checkpoint_name).exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert_job_ends(tag)
    assert json.loads((folder / "results.json").read_text())["state"] == "running"  # killed mid-run
    resumed = subprocess.run([*zoo_run, "--resume", str(folder)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    first, second = RunFolder(tmp_path / "whole").weights(), RunFolder(folder).weights()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    results = [json.loads((path / "results.json").read_text()) for path in (tmp_path / "whole", folder)]
    assert results[0]["test"] == results[1]["test"]
    assert results[1].get("ranks_agree") is (True if nproc > 1 else None)


def write_source_recipes(
    folder: Path, pre: str, fine: str, per_class: int, val_split: float, pre_epochs: int = 1, fine_per_class: int = 0
) -> None:
    """``PRE.toml``, mnist_pretrain on digits 0-1 made small, and ``FINE.toml``, mnist_finetune on
    digits 5-6 from ``recipe:PRE.toml``: a pretrained source that a run builds first."""
    (folder / f"{pre}.toml").write_text(
        f'extends = "{RECIPES / "mnist_pretrain.toml"}"\nname = "{pre}"\n'
        f"[data]\nper_class = {per_class}\nval_split = {val_split}\nclasses = [0, 1]\n[train]\nepochs = {pre_epochs}\n"
    )
    (folder / f"{fine}.toml").write_text(
        f'extends = "{RECIPES / "mnist_finetune.toml"}"\nname = "{fine}"\n[model]\npretrained = "recipe:{pre}.toml"\n'
        f"[data]\nper_class = {fine_per_class or per_class}\nval_split = {val_split}\nclasses = [5, 6]\n"
        "[train]\nepochs = 1\n"
    )


def make_hostile(path: Path, kind: str, outside: Path) -> None:
    """Put at ``path`` a file of a hostile ``kind`` (links point into ``outside``)."""
    path.unlink(missing_ok=True)
    if kind == "link outside":
        path.symlink_to(outside / "precious.json")
    elif kind == "dangling link":
        path.symlink_to(outside / "made-by-zoo")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "huge sparse":
        with path.open("wb") as file:
            file.truncate(16 << 30)
    else:
        path.write_bytes(b"\xff\xfe{\x80 not utf-8 \xc3")


class NotInMemory(torch.utils.data.Dataset):
    """A dataset that zoo cannot batch in memory: it goes through a DataLoader."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index]
