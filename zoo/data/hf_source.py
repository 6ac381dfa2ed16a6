"""Where an ``hf`` dataset's data comes from: a Hub dataset repo at a commit, a folder written by
``save_to_disk``, or a local folder that ``datasets.load_dataset`` reads (parquet, imagefolder, csv).

``load`` is called once per split by zoo but loads once per process: it resolves a Hub revision to
its commit (``HfApi.dataset_info``) and loads that commit, so a branch that moves on later does not
change what a run recorded. Offline (``HF_HUB_OFFLINE=1``) the ``datasets`` cache answers: a
revision that is a commit must be the cached one (``datasets`` itself would fall back to any cached
copy), a branch or tag is the cached commit. Every failure is one line naming the dataset.

Streamed (``streaming=True``) the splits are ``datasets`` IterableDatasets, read as the files are
fetched; ``Source.split`` then reads a split whole into memory (a validation or test split, which
zoo reads whole anyway), ``Source.stream`` gives it as a stream (the training split). A Hub
dataset streams from the Hub, so offline a stream is refused in one line: the cached copy is read
without ``streaming``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._hub import hub_errors
from .._output import library_logs_to_root
from ..config.sources import HUB_REPO
from ..errors import ZooError

COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Source:
    """A loaded dataset's splits (a ``datasets.DatasetDict``) and where they come from."""

    splits: Any
    where: str  # in messages and cache keys: ORG/NAME@COMMIT, or the folder
    repo: str | None = None  # the Hub dataset repo; None for a local folder
    commit: str | None = None
    classes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (split, label column): names
    streaming: bool = False
    read: dict[str, Any] = field(default_factory=dict)  # streamed splits read whole, by name
    files: dict[str, str] | None = None  # a local folder's streamed splits: their files' digest (``_digest``)

    def split(self, name: str, key: str) -> Any:
        """The split ``name``, which ``data.args.<key>`` chose, as a ``datasets.Dataset`` (a streamed one
        read whole, its images as they are stored)."""
        split = self.stream(name, key)
        if not self.streaming:
            return split
        if name not in self.read:
            from datasets import Dataset, Features, Image

            features = self.features(split, name)
            stored = Features({k: Image(decode=False) if isinstance(v, Image) else v for k, v in features.items()})
            self.read[name] = Dataset.from_list(list(split.cast(stored)), features=stored)
        return self.read[name]

    def stream(self, name: str, key: str) -> Any:
        """The split ``name`` as loaded: a ``datasets.IterableDataset`` when streaming."""
        if name not in self.splits:
            raise ZooError(
                f"data.args.{key} = {name!r}: {self.where} has no such split; its splits: {', '.join(self.splits)}"
            )
        return self.splits[name]

    def features(self, split: Any, name: str) -> Any:
        """``split``'s features; a stream of a format that does not declare them (json, csv) is refused."""
        if split.features is None:
            raise ZooError(f"data.args.streaming: {self.where}, split '{name}', does not declare its features "
                           "(columns and types) up front, as parquet and save_to_disk do; remove streaming")  # fmt: skip
        return split.features


@functools.cache
def load(path: str, revision: str | None, name: str | None, streaming: bool = False) -> Source:
    """The dataset ``path`` (a folder here, else a Hub dataset id) at ``revision``, config ``name``;
    ``streaming``: its splits as streams."""
    try:
        import datasets
    except ImportError:
        raise ZooError("dataset 'hf' needs the datasets library: pip install 'zoo[hf]'") from None
    _quiet(datasets)
    folder = Path(path).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise ZooError(f"data.args.revision applies to Hub datasets, and {folder} is a folder here: remove it")
        splits, files = _local(datasets, folder, name, streaming)
        return Source(splits, str(folder.resolve()), streaming=streaming, files=files)
    if not HUB_REPO.fullmatch(path) or ".." in path:
        raise ZooError(f"data.args.path = {path!r} is neither a folder here nor a Hub dataset id (ORG/NAME)")
    return _hub(datasets, path, revision, name, streaming)


def _local(datasets: Any, folder: Path, name: str | None, streaming: bool) -> tuple[Any, dict[str, str] | None]:
    """The folder's splits; streamed, with each split's files' digest."""
    if (folder / "state.json").is_file():
        raise ZooError(
            f"data.args.path: {folder} holds one split written by save_to_disk; save a DatasetDict "
            "(DatasetDict(train=..., test=...).save_to_disk(...)) so that its splits have names"
        )
    try:
        if (folder / "dataset_dict.json").is_file():
            saved = datasets.load_from_disk(str(folder))
            if not streaming:
                return saved, None
            # Memory-mapped already: streamed, it is read in order, a shard a file.
            shards = {split: len(part.cache_files) or 1 for split, part in saved.items()}
            files = {split: _digest(folder, [cached["filename"] for cached in part.cache_files])
                     for split, part in saved.items()}  # fmt: skip
            streams = {split: part.to_iterable_dataset(num_shards=shards[split]) for split, part in saved.items()}
            return datasets.IterableDatasetDict(streams), files
        _refuse_special_files(folder)
        files = None
        if streaming:
            data_files = datasets.load_dataset_builder(str(folder), name).config.data_files or {}
            files = {split: _digest(folder, paths) for split, paths in data_files.items()}
        return datasets.load_dataset(str(folder), name, streaming=streaming), files
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise ZooError(f"data.args.path: datasets cannot read {folder}: {first_line(exc)}") from None


def _digest(folder: Path, paths: list[str]) -> str:
    """A split's files (their names in ``folder`` and sizes) as one sha256. A stream's saved position
    names a shard by its number, which a file added, removed or rewritten to another size would turn
    into another's rows."""
    found = sorted([os.path.relpath(path, folder), os.stat(path).st_size] for path in paths)
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()


def _refuse_special_files(folder: Path) -> None:
    """datasets lists a folder's regular files only: a FIFO, socket or dangling link named like a shard
    would be skipped without a word, and its rows missing from the run."""
    for path in folder.rglob("*"):
        if not (path.is_file() or path.is_dir()):
            raise ZooError(
                f"data.args.path: {path} is not a regular file (a FIFO, socket, device or dangling link), which "
                "datasets would skip with its rows: remove it or put the file itself there"
            )


def _hub(datasets: Any, repo: str, revision: str | None, name: str | None, streaming: bool) -> Source:
    from huggingface_hub import HfApi, constants

    what = f"dataset {repo}" + (f"@{revision}" if revision else "")
    if streaming and constants.HF_HUB_OFFLINE:
        raise ZooError(f"{what}: data.args.streaming reads from the Hub, and HF_HUB_OFFLINE is set; unset it, or "
                       "remove data.args.streaming to read the copy in the datasets cache")  # fmt: skip
    commit = revision if revision and COMMIT.fullmatch(revision) else None
    if not constants.HF_HUB_OFFLINE:
        with hub_errors(what):
            commit = HfApi().dataset_info(repo, revision=revision).sha
    with hub_errors(what):
        try:
            loaded = datasets.load_dataset(repo, name, revision=commit or revision, streaming=streaming)
        except ConnectionError:  # datasets' own offline miss (an OSError, which hub_errors reads as a cache's)
            if constants.HF_HUB_OFFLINE:
                raise _not_cached(what) from None
            raise
        except (ValueError, datasets.exceptions.DatasetGenerationError) as exc:  # a config that does not exist, ...
            raise ZooError(f"{what}: {first_line(exc)}") from None
    if streaming:
        return Source(loaded, f"{repo}@{commit}", repo, commit, streaming=True)
    cached = _cached_commit(loaded)
    if constants.HF_HUB_OFFLINE:
        if cached is None or (commit is not None and cached != commit):
            raise _not_cached(what, cached)
        commit = cached
    return Source(loaded, f"{repo}@{commit}", repo, commit)


def _cached_commit(loaded: Any) -> str | None:
    """The commit of the Hub dataset that ``datasets`` read: its cache folder is named by it."""
    for split in loaded.values():
        for cached in split.cache_files:
            folder = Path(cached["filename"]).parent.name
            if COMMIT.fullmatch(folder):
                return folder
    return None


def _not_cached(what: str, cached: str | None = None) -> ZooError:
    held = f" (the cache holds commit {cached})" if cached else ""
    return ZooError(
        f"{what} is not in the datasets cache{held} and HF_HUB_OFFLINE is set; "
        "run once online (without HF_HUB_OFFLINE) to download it"
    )


def _quiet(datasets: Any) -> None:
    """``datasets`` logs through its own stderr handler: send it to the root logger, which shows it with
    ``zoo --verbose`` only; its progress bars follow huggingface_hub's (HF_HUB_DISABLE_PROGRESS_BARS)."""
    from huggingface_hub.utils import are_progress_bars_disabled

    library_logs_to_root("datasets")
    if are_progress_bars_disabled():
        datasets.disable_progress_bars()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
