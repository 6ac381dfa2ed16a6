"""The recipe runner, read top to bottom: claim the run folder, set the recipe up, train it, finish the folder.

``run`` claims the folder (a new one, or the run to ``--resume``), resolves the pretrained source
(a ``recipe:`` source is trained first and cached), builds the run (``setup.build_run``), fits
it (``Trainer.fit``) and finishes the folder (``finish.finish_run``).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .. import _files
from .. import _locking as locking
from ..config import recipe as recipes
from ..config.schema import OutputConfig, Recipe
from ..config.sources import WeightSource
from ..errors import ZooError
from ..inference.prepared import RunSetup
from ..parallel import distributed
from ..parallel.device import resolve_device
from ..parallel.distributed import log
from ..runs.exports import drop_exports
from ..runs.folder import RunFolder, RunResults
from ..sharing.resolve import resolve
from . import checkpoint, launch
from .finish import finish_run
from .loop import Trainer
from .setup import build_run, print_setup, seed_everything


@dataclass
class RunResult:
    folder: Path
    results: RunResults


def run(recipe: Recipe, progress: bool = True, dry_run: bool = False, resume: Path | None = None) -> RunResult | None:
    """Train and evaluate ``recipe``; returns the run folder and results (None for a dry run).

    ``resume`` continues the run in that folder from its newest checkpoint. The folder is claimed
    first, before any data, model or pretrained source is read, and released at the end.
    """
    distributed.setup(resolve_device(recipe.train.device))
    folder = RunFolder(resume) if resume else output_folder(recipe, create=not dry_run and distributed.is_main())
    folder = RunFolder(distributed.from_main(folder.path))  # the folder rank 0 chose and created
    new = not resume and not folder.path.exists()
    claim = locking.claim(folder.path) if distributed.is_main() and not dry_run else None
    new = new or (claim is not None and not resume and recipe.output.dir is None)  # output_folder created it
    try:
        if claim and claim.took_over:
            owner = claim.took_over
            log(
                f"{folder}: taking over from process {owner.get('pid')} (started {owner.get('started')}), which is gone"
            )
        latest = distributed.decided_by_main(lambda: check_resumable(folder, recipe)) if resume else None
        source = resolve_source(recipe.model.pretrained, progress, dry_run)
        setup = build_run(recipe, progress, source)
        print_setup(setup)
        if dry_run:
            return None
        return _train(setup, folder, latest, progress)
    finally:
        if claim:
            claim.release()
            if new:
                _remove_if_empty(folder.path)


def _train(setup: RunSetup, folder: RunFolder, latest: Path | None, progress: bool) -> RunResult:
    recipe = setup.recipe
    # Same initial weights on every rank, but each its own dropout; and training's random numbers
    # never depend on what setting up drew (a cache built or found, a download, a pretraining run).
    seed_everything(recipe.train.seed + distributed.rank())
    trainer = Trainer(setup, folder)
    if latest is not None:
        trainer.load_checkpoint(latest)
        log(f"resuming {folder} from {latest.name} (epoch {trainer.epoch}, step {trainer.step})")
    if distributed.is_main():
        folder.write_results(RunResults(state="running", recipe_hash=recipe.hash))
        folder.write_recipe(recipe)
        if latest is not None:  # the weights will change: exports of the old ones would answer for the new
            for name in drop_exports(folder):
                log(f"removed {name}, exported from the weights this run now trains on (`zoo export` it again)")
        launch.leave_note(launch.RUN_FOLDER, str(folder.path.resolve()))  # for `zoo run --nproc`, after Ctrl-C
    log(f"run folder: {folder}")
    try:
        state, reason = trainer.fit(progress)
        results = finish_run(setup, trainer, folder, state, reason, trainer.seconds())
    except BaseException as exc:
        _record_failure(folder, recipe, exc, trainer)
        raise
    return RunResult(folder.path, results)


def _record_failure(folder: RunFolder, recipe: Recipe, exc: BaseException, trainer: Trainer) -> None:
    """Mark the run failed in results.json and to the loggers; a failure to do so is noted on the exception, not raised."""
    if not distributed.is_main() or isinstance(exc, KeyboardInterrupt):
        return
    try:
        reason = str(distributed.rank_left(exc) or f"{type(exc).__name__}: {exc}")
        failed = RunResults(state="failed", reason=reason, recipe_hash=recipe.hash, failed_at_step=trainer.step)
        folder.write_results(failed)
        trainer.loggers.finish(failed.model_dump(exclude_none=True), [folder.file(RunFolder.RESULTS)])
    except ZooError as unrecorded:
        exc.add_note(f"(the failure could not be recorded in the run folder: {unrecorded})")


def _remove_if_empty(path: Path) -> None:
    """Leave nothing behind when a new run stopped before writing anything (a mistake found early)."""
    with contextlib.suppress(OSError):  # not empty: the run wrote something worth keeping
        path.rmdir()
        if path.parent.name == "runs":
            path.parent.rmdir()


def resolve_source(source: WeightSource, progress: bool, dry_run: bool) -> WeightSource:
    """``source`` as local files (zoo/sharing/resolve.py), a ``recipe:`` source trained first if not cached."""

    def train(path: Path) -> Path | None:
        cached = _cached_recipe_run(path, progress, dry_run)
        return cached.path if cached else None  # a dry run does not train the source

    return resolve(source, train_recipe=train)


def _cached_recipe_run(path: Path, progress: bool, dry_run: bool) -> RunFolder | None:
    """The output of the recipe at ``path``, cached by the hash of the resolved recipe (None on a dry run).

    Rank 0 decides and builds, holding a lock on the cache entry: a second zoo process that
    needs the same source waits for it instead of training it again.
    """
    source = recipes.load(path)
    cached = RunFolder(recipes.cache_dir() / "runs" / f"{source.name}-{source.hash[:12]}")
    main = distributed.is_main()
    with locking.locked(cached.path) if main else contextlib.nullcontext():
        if main:  # under the lock, any staging folder of this entry was left by a dead process
            for abandoned in cached.path.parent.glob(f".{cached.path.name}.*"):
                shutil.rmtree(abandoned, ignore_errors=True)
        if distributed.decided_by_main(lambda: cached.state == "finished"):
            log(f"pretrained: {path.name} (cached in {cached})")
            _share_with_every_node(cached)
            return cached
        if dry_run:
            log(f"pretrained: {path.name} is not cached yet; `zoo run` trains it first")
            return None
        log(f"pretrained: running {path.name} first (cached afterwards in {cached})")
        staging = _files.staging_folder(cached.path) if main else None
        staging = distributed.from_main(staging)
        try:
            result = run(source.model_copy(update={"output": OutputConfig(dir=str(staging))}), progress=progress)
            if result.results.state != "finished":
                raise ZooError(f"pretraining recipe {path} did not finish ({result.results.state})")
            if main:
                _files.replace_folder(staging, cached.path)
        finally:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
    _share_with_every_node(cached)
    return cached


def _share_with_every_node(cached: RunFolder) -> None:
    """Rank 0's cached run folder, copied into each node's own cache where that node lacks it.

    Nodes need not share a filesystem: a source is built once, on rank 0, and sent to the rest.
    """
    if distributed.world_size() == 1:
        return
    missing = distributed.all_gathered(distributed.local_rank() == 0 and cached.state != "finished")
    files = None
    if distributed.is_main() and any(missing):
        files = {name: cached.file(name).read_bytes() for name in RunFolder.SHARED if cached.file(name).is_file()}
    files = distributed.from_main(files)
    if missing[distributed.rank()]:
        with _files.staged_folder(cached.path) as staging:  # replaces an unfinished copy, if any
            for name, data in files.items():
                _files.atomic_write(staging / name, data)
    distributed.barrier()  # every node now holds the source


def output_folder(recipe: Recipe, create: bool) -> RunFolder:
    """``output.dir``, which must be new or empty, else a new ``runs/<name>-<timestamp>`` (created if ``create``)."""
    if recipe.output.dir:
        folder = RunFolder(recipe.output.dir)
        if folder.holds_run:
            raise ZooError(f"output.dir {folder} already holds a run; choose another folder or remove that one")
        if folder.path.is_dir() and any(path.name != locking.LOCK_NAME for path in folder.path.iterdir()):
            raise ZooError(f"output.dir {folder} is a folder with other files in it; name a new or empty folder")
        if folder.path.exists() and not folder.path.is_dir():
            raise ZooError(f"output.dir {folder} is a file, not a folder")
        return folder
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in range(1, 1000):
        path = Path("runs") / (f"{recipe.name}-{stamp}" + (f"-{suffix}" if suffix > 1 else ""))
        if not create:
            return RunFolder(path)
        try:
            path.mkdir(parents=True)  # atomic: two runs started in the same second get two folders
        except FileExistsError:
            continue
        except OSError as exc:
            raise ZooError(f"cannot create the run folder {path}: {exc.strerror}") from None
        return RunFolder(path)
    raise ZooError(f"runs/ already holds 999 runs of {recipe.name} started at {stamp}")


# What a resumed run may change: how long it trains, and where it logs (which does not change the weights).
RESUMABLE_KEYS = {"train.epochs", "train.max_steps", "output.dir", "train.tensorboard", "train.log_every"}


def check_resumable(folder: RunFolder, recipe: Recipe) -> Path:
    """The newest checkpoint of the run in ``folder``, if ``recipe`` may continue it."""
    if not folder.path.is_dir():
        raise ZooError(f"--resume: run folder not found: {folder}")
    try:
        saved = folder.recipe
    except ZooError as exc:
        raise ZooError(f"--resume: {exc}") from None
    changed = recipes.differing_keys([saved.to_dict(), recipe.to_dict()])
    differing = [key for key in changed if key not in RESUMABLE_KEYS and not key.startswith("log.")]
    streamed = recipe.data.dataset == "hf" and recipe.data.args.get("streaming") is True
    if streamed and {"train.epochs", "train.max_steps"} & set(changed):
        # A stream's epochs are cut from train.max_steps: the epochs already trained keep their length.
        raise ZooError(
            f"--resume: {folder} reads a stream, whose epochs are train.max_steps cut in train.epochs parts: "
            "neither may change on resume; start a new run to train longer"
        )
    if differing:
        raise ZooError(
            f"--resume: the recipe differs from the run in {folder} in {', '.join(differing)}; "
            "only train.epochs, train.max_steps and where it logs (log.*, train.tensorboard, train.log_every) may "
            f"change: go on with the run's own recipe, `zoo run {shlex.quote(str(folder.file(RunFolder.RECIPE)))} "
            f"--resume {shlex.quote(str(folder))}`"
        )
    checkpoints = folder.checkpoints
    if not checkpoints:
        raise ZooError(
            f"--resume: {folder} has no checkpoint yet, nothing to go on from: start the run again "
            f"with another output.dir, or remove {folder} first"
        )
    state = checkpoint.read_state(checkpoints[-1])
    trained_epochs = state["epoch"] - 1 if state["position"] == 0 else state["epoch"]
    if recipe.train.epochs < trained_epochs or (recipe.train.max_steps or state["step"]) < state["step"]:
        raise ZooError(
            f"--resume: {folder} has already trained {trained_epochs} epoch(s), {state['step']} steps; "
            "train.epochs and train.max_steps can only grow"
        )
    return checkpoints[-1]


def latest_run(recipe: Recipe, runs: Path = Path("runs")) -> Path:
    """The newest run folder of ``recipe`` (by name) under ``runs`` that has a checkpoint."""
    candidates = [RunFolder(path) for path in runs.glob(f"{recipe.name}-*")]
    candidates = [run for run in candidates if run.file(RunFolder.RECIPE).is_file() and run.checkpoints]
    if not candidates:
        raise ZooError(f"--resume: no run of '{recipe.name}' with a checkpoint under {runs}/; name one: --resume RUN")
    return max(candidates, key=lambda run: run.checkpoints[-1].stat().st_mtime).path
