from __future__ import annotations

from pathlib import Path

import pytest

from zoo import artifacts
from zoo.errors import ZooError


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    artifacts.write_json(target, {"a": 1})
    artifacts.write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.json"
    artifacts.write_json(target, {"version": 1})

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", full_disk)
    with pytest.raises(
        ZooError, match="cannot write .*config.json: No space left on device; config.json was left as it was"
    ):
        artifacts.write_json(target, {"version": 2})
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
