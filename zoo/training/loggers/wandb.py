"""The built-in ``wandb`` logger: one Weights & Biases run per run folder, continued by ``--resume``.

``[log.wandb]`` takes ``project``, ``entity`` and ``tags`` (else W&B's own WANDB_PROJECT,
WANDB_ENTITY; WANDB_MODE=offline works as always). W&B keeps its files in RUN/wandb, and prints
nothing: zoo's output stays zoo's (and one JSON object a line under --log-format json).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import ZooError
from ...runs.folder import RunFolder
from . import tracking


class WandbLogger:
    """Configuration, metrics, summary and the run folder's files in a W&B run."""

    def __init__(self, project: str | None = None, entity: str | None = None, tags: Sequence[str] = ()) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise ZooError("the wandb logger needs Weights & Biases: pip install 'zoo[wandb]'")
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise ZooError("log.wandb.tags must be a list of strings")
        self.project, self.entity, self.tags = project, entity, list(tags)
        self._run: Any = None
        self.folder: Path | None = None

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        import wandb

        known = tracking.remembered_run(run, "wandb") if step else None
        files = RunFolder(run).file(RunFolder.WANDB)
        # zoo's own name in zoo's own folder: anything but a real folder there is replaced, never written through.
        if files.is_symlink() or (files.exists() and not files.is_dir()):
            files.unlink()
        files.mkdir(exist_ok=True)
        self.folder = run
        # W&B's remarks (each saved file's "Symlinked 1 file ...") stay out of zoo's output; its errors
        # still show. Its terminal is set up once per process, by wandb.setup, not by each run's settings.
        quiet = wandb.Settings(silent=True, show_warnings=False, console="off")
        wandb.setup(quiet)
        self._run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=run.name,
            id=known,  # None: W&B names a new run
            resume="allow",
            dir=str(files),
            tags=self.tags,
            config={**tracking.parameters(recipe), **tracking.tags(recipe)},
            settings=quiet,
            reinit="create_new",
        )
        if not known:
            tracking.remember_run(run, "wandb", self._run.id)

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        assert self._run is not None, "start() comes before log()"
        self._run.log(tracking.metric_names(metrics, epoch), step=step)

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        if self._run is None:
            return
        self._run.summary.update(tracking.final_metrics(results) | {"state": results.get("state", "")})
        for file in files:
            self._run.save(str(file), base_path=str(self.folder), policy="now")
        self._run.finish(exit_code=0 if results.get("state") == "finished" else 1)
        self._run = None
