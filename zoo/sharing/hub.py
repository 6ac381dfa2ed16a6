"""Sharing run folders through the Hugging Face Hub: ``zoo push`` and ``zoo pull``.

The token comes from huggingface_hub's own sources (``HF_TOKEN``, ``hf auth login``); zoo never
reads, prints or stores it. Pulls go into the Hugging Face cache (``snapshot_download``), so
they work offline once cached. Only run-folder files are pushed or pulled, and only
safetensors weights are ever loaded from them.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download

from .. import _files
from .._hub import hub_errors
from .._safetensors import tensors_of
from ..config.sources import HUB_PREFIX, HubRepo, RegistryName
from ..errors import ZooError
from ..models import adapters
from ..runs.exports import check_made_from
from ..runs.folder import FilePin, HubRecord, RunFolder
from . import adapted
from . import registry as catalog
from .hub_api import check_repo_id


@dataclass
class Pushed:
    url: str
    commit: str


def push(
    folder: Path,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    adapter_only: bool = False,
) -> Pushed:
    """Upload a finished run folder to ``repo`` (created if needed), on ``revision`` (default main).

    What goes up is a staged copy: the run folder's own regular files only (never a symbolic link
    or anything outside it), and a recipe.toml without this machine's paths. Their hashes go into
    hub.json, which `zoo registry add` pins. ``adapter_only``: an adapter run without its merged
    weights (and the exports made from them); a pull applies the adapter to the base its config.json pins.
    """
    check_repo_id(repo)
    run = RunFolder.existing(folder)
    if not run.file(RunFolder.WEIGHTS).is_file() or run.state != "finished":
        raise ZooError(
            f"{folder} is not a finished zoo run (see its {RunFolder.RESULTS}): only finished runs are pushed"
        )
    if adapter_only:
        _check_adapter_only(run)
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as staging:
        files = _stage(run, Path(staging), adapter_only)
        with hub_errors(repo):
            url = api.create_repo(repo, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo,
                folder_path=staging,
                revision=revision,
                commit_message=message or f"zoo push {run.path.name}",
                # A run folder's files left out of this push go from the branch too: an earlier push's
                # weights or exports would otherwise answer for this run (an adapter alone, say).
                delete_patterns=[name for name in RunFolder.SHARED if name not in files],
            )
    branch = revision or constants.DEFAULT_REVISION
    try:
        run.write_hub_record(HubRecord(repo=repo, revision=branch, commit=info.oid, url=str(url), files=files))
    except ZooError as exc:  # the commit exists on the Hub all the same: say which
        raise ZooError(f"pushed to {url} as commit {info.oid}, but {exc}") from None
    return Pushed(str(url), info.oid)


def publish(
    folder: Path,
    repo: str,
    name: str,
    replace: bool = False,
    private: bool = False,
    recipe: Path | None = None,
    adapter_only: bool = False,
) -> tuple[Pushed, catalog.HubSource]:
    """Push a finished run, then pin ``name`` in registry.json to what the Hub now holds.

    The pins are read back: the pushed commit's files downloaded afresh (not from the cache) and
    hashed, and each must be the file that was pushed. An adapter run's entry pins its base too.
    What ``registry add`` would refuse (an existing name unless ``replace``, a missing recipe, a damaged
    or Hub-only registry) is refused before anything is pushed.
    """
    catalog.check_addable(name, recipe, replace)
    pushed = push(folder, repo, private=private, message=f"zoo publish {name}", adapter_only=adapter_only)
    record = RunFolder(folder).hub_record
    assert record is not None, "push writes hub.json"
    pins = _read_back(repo, pushed.commit, record.files)
    base = adapters.base_pin_of(RunFolder(folder))
    hub = catalog.HubSource(repo=repo, revision=pushed.commit, files=pins, base=base)
    try:
        catalog.add(folder, name, recipe, hub=hub, replace=replace)
    except ZooError as exc:  # the commit exists on the Hub all the same: say which
        raise ZooError(f"pushed to {pushed.url} as commit {pushed.commit}, but {exc}") from None
    return pushed, hub


def _read_back(repo: str, commit: str, pushed: dict[str, FilePin]) -> dict[str, FilePin]:
    """The sha256 and size of every pushed file as the Hub serves it at ``commit``; each must be what was pushed."""
    pins = {}
    with tempfile.TemporaryDirectory(prefix="zoo-publish-") as cache, hub_errors(f"{repo}@{commit}"):
        snapshot = Path(snapshot_download(repo, revision=commit, allow_patterns=sorted(pushed), cache_dir=cache))
        for name, sent in pushed.items():
            served = snapshot / name
            pin = FilePin(sha256=_files.sha256_of(served), size=served.stat().st_size) if served.is_file() else None
            if pin != sent:
                found = f"sha256 {pin.sha256}" if pin else "nothing"
                raise ZooError(
                    f"{repo} at commit {commit} serves {found} for {name}, not the {sent.sha256} zoo pushed: "
                    "nothing was pinned in registry.json"
                )
            pins[name] = pin
    return pins


def _check_adapter_only(run: RunFolder) -> None:
    """An adapter-only push needs peft's files and a base that another machine can fetch by its pin."""
    if not run.file(RunFolder.ADAPTER_WEIGHTS).is_file() or not run.file(RunFolder.ADAPTER_CONFIG).is_file():
        raise ZooError(
            f"--adapter-only: {run} has no {RunFolder.ADAPTER_WEIGHTS} and {RunFolder.ADAPTER_CONFIG}: it was "
            "not trained with model.adapter; push it without --adapter-only"
        )
    pin = adapters.base_pin_of(run)
    if pin is None:
        raise ZooError(
            f"--adapter-only: {run} pins no base weights (model.pretrained = {run.recipe.model.pretrained!r} are "
            "random or a plugin's own): nobody could apply the adapter; push it without --adapter-only"
        )
    if not pin.source.startswith(HUB_PREFIX):
        print(f"zoo: warning: the base of {run} is the local folder {pin.source}: only a machine that holds it "
              "can apply the adapter (train on 'hf-hub:' or 'registry:' weights to share it further)",
              file=sys.stderr, flush=True)  # fmt: skip


def _stage(run: RunFolder, staging: Path, adapter_only: bool = False) -> dict[str, FilePin]:
    """Copy the run folder's shared files into ``staging``; their pins. Refused before anything is sent:
    symbolic links and non-files, weights that are not finite, and exports not made from these weights.
    ``adapter_only``: without the merged weights and their exports."""
    files = {}
    left_out = (RunFolder.WEIGHTS, *RunFolder.EXPORTS) if adapter_only else ()
    for name in RunFolder.SHARED:  # the weights first: the exports are checked against them
        if name in left_out:
            continue
        if name == RunFolder.RECIPE:
            data = run.recipe.shareable().to_toml().encode()
        else:
            data = _files.read_file(run.file(name), limit=None, follow_symlinks=False)
            if data is None:
                continue  # plots and exports are optional
        if name in (RunFolder.WEIGHTS, RunFolder.ADAPTER_WEIGHTS):
            _check_finite(run.file(name), data)
        elif name in RunFolder.EXPORTS:
            check_made_from(run.file(name), data, files[RunFolder.WEIGHTS].sha256)
        (staging / name).write_bytes(data)
        files[name] = FilePin(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return files


def _check_finite(path: Path, data: bytes) -> None:
    """The check `zoo predict` makes when it loads weights, made before they are shared."""
    from ..models.build import nonfinite_tensors

    bad = nonfinite_tensors(tensors_of(data, path))
    if bad:
        raise ZooError(
            f"{path} holds NaN or infinite values (tensor '{bad[0]}'): it cannot predict, so it is not pushed"
        )


def pull(source: HubRepo | RegistryName) -> Path:
    """The local folder of a Hub repo (at its revision), or of a registry name at its pinned commit.

    A registry name, and a repo at a commit that a registry name pins, fetch exactly the pinned
    files and check the sha256 of every one. An adapter pushed alone comes back as it is, without
    model.safetensors: the resolver (zoo/sharing/resolve.py) applies it to its pinned base.
    """
    if isinstance(source, RegistryName):
        label, entry = source.name, catalog.entry(source.name)
        if entry.sources.hub is None:
            raise ZooError(
                f"'{source.name}' has no Hub source, only a recipe (recipe:{entry.sources.recipe}, relative to its "
                f"registry.json): model.pretrained = 'registry:{source.name}' trains it"
            )
        pins = entry.sources.hub.files
        source = HubRepo(entry.sources.hub.repo, entry.sources.hub.revision)
    else:
        label, pins = source.spec, catalog.pins_of(source)
    wanted = sorted(pins) if pins else list(RunFolder.SHARED)
    with hub_errors(source.spec):
        check_repo_id(source.repo)
        folder = Path(snapshot_download(source.repo, revision=source.revision, allow_patterns=wanted))
    adapter_only = adapted.is_adapter_only(folder)  # made whole by the resolver, from its pinned base
    if not (folder / RunFolder.WEIGHTS).is_file() and not adapter_only:
        raise ZooError(
            f"{source.spec} has no {RunFolder.WEIGHTS}: it is not a zoo or timm model repo with safetensors weights "
            "(zoo never loads pickled weights)"
        )
    for name, pin in (pins or {}).items():
        path = folder / name
        found = _files.unpinned_sha256(path, pin.sha256)
        if found:
            raise ZooError(
                f"{label}: {path} has sha256 {found}, but registry.json pins {pin.sha256}; refusing to load it "
                f"(delete the cached copy under {constants.HF_HUB_CACHE} and pull again)"
            )
    if not adapter_only:
        _check_exports(folder, label)
    return folder


def _check_exports(folder: Path, label: str) -> None:
    """Every export of a pulled zoo run was made from the pulled weights (one pushed beside later weights
    is stale); another project's repo (its config.json without zoo's section) keeps its exports its own way."""
    if not _written_by_zoo(folder / RunFolder.CONFIG):
        return
    weights = _files.sha256_of(folder / RunFolder.WEIGHTS)
    for name in RunFolder.EXPORTS:
        data = _files.read_file(folder / name, limit=None)
        if data is not None:
            check_made_from(folder / name, data, weights, f"refusing to pull {label}: export the run again and push it")


def _written_by_zoo(config: Path) -> bool:
    try:
        written = json.loads(_files.read_file(config) or b"null")
    except ValueError:
        return False
    return isinstance(written, dict) and isinstance(written.get("zoo"), dict)
