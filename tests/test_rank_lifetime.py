"""A rank of torchrun never outlives its launcher (zoo.parallel.distributed.end_with_launcher, through
zoo._lifetime.end_with_parent), on Linux through the kernel and elsewhere through a thread watching the parent."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import process_state

RANK = textwrap.dedent(
    """
    import sys, time
    from zoo import _lifetime
    from zoo.parallel import distributed
    if sys.argv[1] == "watch":
        _lifetime.sys = type("Elsewhere", (), {"platform": "darwin"})  # not Linux: the watching thread
    distributed.end_with_launcher()
    print("ready", flush=True)
    time.sleep(120)
    """
)
LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys
    rank = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
    print(rank.pid, rank.stdout.readline().strip(), flush=True)
    rank.wait()
    """
)


def _alive(pid: int) -> bool:
    return process_state(pid) not in ("Z", "X", None)


@pytest.mark.parametrize("how", ["prctl", "watch"])
def test_a_rank_ends_when_its_launcher_is_killed(how: str) -> None:
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test"}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, RANK, how], stdout=subprocess.PIPE, text=True, env=env)
    pid, ready = launcher.stdout.readline().split()
    assert ready == "ready"
    assert _alive(int(pid))
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 5
    while _alive(int(pid)):
        assert time.monotonic() < deadline, f"rank {pid} outlived its launcher ({how})"
        time.sleep(0.05)


def test_a_rank_whose_launcher_died_before_it_started_ends_at_once() -> None:
    """The launcher named by ZOO_LAUNCHER_PID is not this process's parent any more: it died first."""
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "ZOO_LAUNCHER_PID": str(os.getpid() + 10**6)}
    rank = subprocess.run([sys.executable, "-c", RANK, "prctl"], capture_output=True, text=True, env=env, timeout=60)
    assert rank.returncode == -signal.SIGKILL and "ready" not in rank.stdout


def test_outside_torchrun_nothing_is_set() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TORCHELASTIC_RUN_ID"}
    env["ZOO_LAUNCHER_PID"] = str(os.getpid() + 10**6)  # would end a rank; this is no rank
    script = RANK.replace("time.sleep(120)", "")
    result = subprocess.run(
        [sys.executable, "-c", script, "prctl"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0 and "ready" in result.stdout


@pytest.mark.parametrize(
    ("error", "left"),
    [
        (
            RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1"),
            True,
        ),
        (RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:538] Connection reset by peer"), True),
        (RuntimeError("[Errno 32] Broken pipe: could not write to the plugin's socket"), False),  # the plugin's own
        (ValueError("Connection closed by peer"), False),
    ],
)
def test_only_a_collective_losing_its_peer_is_a_rank_leaving(
    error: Exception, left: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.parallel import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (distributed.rank_left(error) is not None) is left
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.rank_left(error) is None  # one process has no other rank to lose


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_refused_prctl_is_an_error_not_an_orphan_to_be() -> None:
    """The rank and a trial of `zoo tune` share end_with_parent: prctl's failure raises rather than passes."""
    from zoo._lifetime import end_with_parent

    with pytest.raises(OSError, match="PR_SET_PDEATHSIG") as refused:
        end_with_parent(os.getppid(), 1000)  # no such signal: the kernel refuses it (EINVAL)
    assert refused.value.errno == errno.EINVAL
