"""Adapter-only runs made whole: a pulled run that holds peft's files and the pin of its base, not model.safetensors.

``zoo push --adapter-only`` shares an adapter run without its merged weights. Whatever reads it
(``zoo pull``, ``predict``, ``eval``, ``registry:NAME``, ``model.pretrained``) gets a whole run folder
from ``made_whole``: the pinned base fetched through the caller's resolution of weight sources (the
Hugging Face cache for ``hf-hub:``), every pinned file of it checked, the adapter applied by peft and
merged. The result is kept under ``$ZOO_CACHE_DIR/adapted/``, named by the sha256 of everything it is
made from, so a second read (offline too) costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from .. import _files
from .. import _locking as locking
from ..config.recipe import cache_dir
from ..errors import ZooError
from ..models import adapters
from ..runs.folder import RunFolder

# A pin's source (hf-hub:ORG/NAME@COMMIT, or a folder) -> the local folder holding those weights.
FetchBase = Callable[[str], Path]


def is_adapter_only(folder: Path) -> bool:
    """Whether ``folder`` holds an adapter run's peft files without the merged weights."""
    return not (folder / RunFolder.WEIGHTS).is_file() and (folder / RunFolder.ADAPTER_WEIGHTS).is_file()


def made_whole(folder: Path, label: str, fetch: FetchBase, expected: adapters.BasePin | None = None) -> Path:
    """The run folder of the adapter-only run in ``folder``, with ``model.safetensors`` merged from its
    pinned base (``fetch`` finds it) and its adapter; ``expected`` is a registry's pin of that base, which
    must be the run's own."""
    run = RunFolder(folder)
    pin = adapters.base_pin_of(run)
    if pin is None:
        raise ZooError(
            f"{label} holds an adapter ({RunFolder.ADAPTER_WEIGHTS}) but neither {RunFolder.WEIGHTS} nor the pin of "
            f"its base weights (zoo.{adapters.BASE_KEY} in {RunFolder.CONFIG}): push the full run instead"
        )
    if expected is not None and expected != pin:
        raise ZooError(
            f"{label}: registry.json pins the base {expected.source}, but {RunFolder.CONFIG} names {pin.source} "
            "with other files; refusing to apply the adapter (publish the run again)"
        )
    shared = {name: _files.read_file(folder / name, limit=None) for name in RunFolder.SHARED}
    shared = {name: data for name, data in shared.items() if data is not None}
    made_of = {name: hashlib.sha256(data).hexdigest() for name, data in shared.items()}
    key = hashlib.sha256(json.dumps({"files": made_of, "base": pin.model_dump()}, sort_keys=True).encode())
    target = cache_dir() / "adapted" / f"{run.recipe.name}-{key.hexdigest()[:16]}"
    with locking.locked(target):
        if (target / RunFolder.WEIGHTS).is_file():  # written whole (a staged folder renamed) or not at all
            return target
        try:
            base = fetch(pin.source)
        except ZooError as exc:  # say whose base it is: the user asked for the adapter, not for it
            raise ZooError(f"{label} adapts the base {pin.source}, which cannot be fetched: {exc}") from None
        adapters.check_base(base, pin, label)
        weights = adapters.merged_weights(run, base)
        with _files.staged_folder(target) as staging:
            for name, data in shared.items():
                _files.atomic_write(staging / name, data)
            RunFolder(staging).write_weights(weights, _metadata(run))
    return target


def _metadata(run: RunFolder) -> dict[str, str]:
    """model.safetensors' metadata as the run wrote it (label names, recipe hash, temperature)."""
    metadata = {"label_names": json.dumps(run.label_names), "recipe_hash": str(run.config["zoo"].get("recipe_hash", "")),
                "format": "pt"}  # fmt: skip
    if run.temperature != 1.0:
        metadata["temperature"] = json.dumps(run.temperature)
    return metadata
