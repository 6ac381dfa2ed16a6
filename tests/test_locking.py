"""Claims and locks, with real concurrent processes: two runs, a run and a resume, four registry writers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import RECIPES, assert_user_error, dead_pid, make_hostile, process_state, write_finished_run, zoo_command

from zoo import _locking as locking
from zoo.errors import ZooError

# Long enough to be caught mid-run: 600 images a class of two digits, checkpoints every 4 steps.
SLOW = ["data.classes=[0,1]", "data.per_class=600", "data.batch_size=8", "train.epochs=3", "train.checkpoint_every=4"]


def test_a_claim_is_exclusive_and_taken_over_only_from_the_dead(tmp_path: Path) -> None:
    claim = locking.claim(tmp_path / "run")
    owner = json.loads((tmp_path / "run" / locking.LOCK_NAME).read_text())
    assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
    with pytest.raises(ZooError, match=f"is in use by process {os.getpid()} on {socket.gethostname()}"):
        locking.claim(tmp_path / "run")
    claim.release()
    assert not (tmp_path / "run" / locking.LOCK_NAME).exists()

    stale = {"host": socket.gethostname(), "pid": dead_pid(), "started": "earlier"}
    (tmp_path / "run" / locking.LOCK_NAME).write_text(json.dumps(stale))
    assert locking.is_abandoned(tmp_path / "run", older_than=3600)
    taken = locking.claim(tmp_path / "run")
    assert taken.took_over == stale
    taken.release()

    elsewhere = {"host": "another-machine", "pid": dead_pid(), "started": "earlier"}
    (tmp_path / "run" / locking.LOCK_NAME).write_text(json.dumps(elsewhere))
    with pytest.raises(ZooError, match="in use by process .* on another-machine"):
        locking.claim(tmp_path / "run")  # not provably dead: it may live on that machine


def test_an_owner_killed_and_never_collected_is_dead_and_its_folder_taken_over(tmp_path: Path) -> None:
    # A run killed with its parent is an orphan; where init never collects it (some containers) its pid
    # stays a zombie that still answers os.kill. The child here is one we kill and do not wait for.
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        zombie.kill()
        deadline = time.monotonic() + 30
        while process_state(zombie.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(zombie.pid, 0)  # the pid still answers
        stale = {"host": socket.gethostname(), "pid": zombie.pid, "started": "earlier"}
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / locking.LOCK_NAME).write_text(json.dumps(stale))
        assert locking.is_abandoned(tmp_path / "run", older_than=3600)
        taken = locking.claim(tmp_path / "run")
        assert taken.took_over == stale
        taken.release()
    finally:
        zombie.wait()


def test_a_pid_reused_by_a_process_begun_after_the_claim_is_not_its_owner(tmp_path: Path) -> None:
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / "run").mkdir()
        reused = {"host": socket.gethostname(), "pid": later.pid, "started": "2020-01-01T00:00:00+00:00"}
        (tmp_path / "run" / locking.LOCK_NAME).write_text(json.dumps(reused))
        taken = locking.claim(tmp_path / "run")
        assert taken.took_over == reused
        taken.release()

        started = datetime.now().astimezone().isoformat(timespec="seconds")
        for owner in ({"pid": os.getpid(), "started": started}, {"pid": later.pid}):  # may be the owner: kept
            (tmp_path / "run" / locking.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), **owner}))
            with pytest.raises(ZooError, match=f"in use by process {owner['pid']}"):
                locking.claim(tmp_path / "run")
    finally:
        later.kill()
        later.wait()


HOLDER_WITH_A_CHILD = """
import os, sys, time
from pathlib import Path
from zoo import _locking
_locking.claim(Path(sys.argv[1]))
child = os.fork()  # as a DataLoader worker is
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


def test_a_killed_owners_forked_child_does_not_keep_its_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_WITH_A_CHILD, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(ZooError, match=f"in use by process {holder.pid}"):
            locking.claim(tmp_path / "run")
        holder.kill()
        holder.wait()
        taken = locking.claim(tmp_path / "run")  # at once: the child lives on, and holds nothing
        assert taken.took_over["pid"] == holder.pid
        assert process_state(child) not in ("Z", "X", None)
        taken.release()
    finally:
        os.kill(child, signal.SIGKILL)


def start_slow_run(folder: Path, *extra: str) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("zoo")), "run", str(RECIPES / "mnist.toml"), *SLOW, *extra]
    process = subprocess.Popen([*command, f"output.dir={folder}", "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((folder / "checkpoints").glob("step-*")):  # claimed, and well into training
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process


def test_two_runs_into_one_folder_and_a_resume_of_a_running_run_are_refused(mnist_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shared-output"
    first = start_slow_run(folder)
    try:
        second = zoo_command("run", str(RECIPES / "mnist.toml"), *SLOW, f"output.dir={folder}")
        assert_user_error(second, "already holds a run")
        resumed = zoo_command("run", str(RECIPES / "mnist.toml"), *SLOW, "--resume", str(folder))
        assert_user_error(resumed, "is in use by process", str(first.pid))
    finally:
        first.kill()
        first.wait()
    # Killed: its claim is provably stale now, and a resume takes the folder over.
    resumed = zoo_command("run", str(RECIPES / "mnist.toml"), *SLOW, "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over from process {first.pid}" in resumed.stdout
    assert json.loads((folder / "results.json").read_text())["state"] == "finished"
    assert not (folder / locking.LOCK_NAME).exists()


def test_two_runs_started_at_once_into_one_new_folder_one_wins(mnist_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "race"
    command = [str(Path(sys.executable).with_name("zoo")), "run", str(RECIPES / "mnist.toml"), *SLOW]
    runs = [
        subprocess.Popen([*command, "train.epochs=1", f"output.dir={folder}", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outcomes = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
    assert outcomes[0][0] == 0 and outcomes[1][0] == 2, outcomes
    assert "is in use by process" in outcomes[1][1] or "already holds a run" in outcomes[1][1]
    assert json.loads((folder / "results.json").read_text())["state"] == "finished"


def test_four_concurrent_registry_writers_lose_nothing(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text('{"schema": 2, "weights": {}}')
    run = write_finished_run(tmp_path / "run").path
    writer = (
        "import sys; from pathlib import Path; from zoo.sharing import registry as catalog\n"
        "for round in range(3):\n"
        f"    catalog.add(Path({str(run)!r}), f'w{{sys.argv[1]}}-{{round}}', Path({str(RECIPES / 'mnist.toml')!r}))\n"
    )
    env = {**os.environ, "ZOO_REGISTRY": str(registry)}
    writers = [
        subprocess.Popen([sys.executable, "-c", writer, str(i)], env=env, stderr=subprocess.PIPE) for i in range(4)
    ]
    assert all(w.wait(timeout=120) == 0 for w in writers), [w.stderr.read() for w in writers]
    names = json.loads(registry.read_text())["weights"]
    assert sorted(names) == sorted(f"w{i}-{r}" for i in range(4) for r in range(3))


def test_a_symlinked_registry_is_written_through_with_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "team" / "registry.json"
    real.parent.mkdir()
    real.write_text('{"schema": 2, "weights": {}}')
    real.chmod(0o664)
    (tmp_path / "registry.json").symlink_to(real)
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "registry.json"))
    from zoo.sharing import registry as catalog

    catalog.add(write_finished_run(tmp_path / "run").path, "digits", RECIPES / "mnist.toml")
    assert (tmp_path / "registry.json").is_symlink() and "digits" in json.loads(real.read_text())["weights"]
    assert real.stat().st_mode & 0o777 == 0o664


@pytest.mark.parametrize(
    ("kind", "refusal"),
    [
        ("link outside", "is a symbolic link, which zoo does not follow here; remove it"),
        ("dangling link", "is a symbolic link, which zoo does not follow here; remove it"),
        ("fifo", "is a FIFO"),
        ("folder", "is a folder"),
    ],
)
def test_a_lock_file_that_is_not_a_regular_file_is_one_line_and_never_followed(
    tmp_path: Path, kind: str, refusal: str
) -> None:
    """A run's .zoo.lock and a shared file's sidecar lock: a link there once had the lock record
    overwrite the file it pointed at, in the user's home; a dangling one recursed forever."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious.json").write_text("mine")
    run_lock, sidecar = tmp_path / "run" / locking.LOCK_NAME, tmp_path / "team" / ".registry.json.lock"
    for lock in (run_lock, sidecar):
        lock.parent.mkdir()
        make_hostile(lock, kind, home)
    with pytest.raises(ZooError, match=f"{run_lock} {refusal}"):
        locking.claim(tmp_path / "run")
    with pytest.raises(ZooError, match=f"{sidecar} {refusal}"), locking.locked(tmp_path / "team" / "registry.json"):
        pass
    assert not locking.is_abandoned(tmp_path / "run", older_than=0)  # not a claim zoo can read: left alone
    assert [(p.name, p.read_text()) for p in home.iterdir()] == [("precious.json", "mine")]
