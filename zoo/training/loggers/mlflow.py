"""The built-in ``mlflow`` logger: one MLflow run per run folder, continued by ``--resume``.

``[log.mlflow]`` takes ``tracking_uri`` (else MLFLOW_TRACKING_URI, else a database in zoo's cache:
``ZOO_CACHE_DIR/mlflow/mlflow.db``), ``experiment`` (else MLFLOW_EXPERIMENT_NAME, else the recipe's
name) and ``artifact_location``, where a new experiment keeps its files (for a ``sqlite:///`` store,
by default ``mlartifacts/`` beside the database, never the working folder). A server that does not
answer costs at most a few retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _TIMEOUT, unless set). Runs open a
``sqlite:///`` store one at a time (``_locking.locked`` on its database): MLflow creates and migrates a new
database in place, which two at once left broken. It talks to the store through
``MlflowClient`` rather than MLflow's process-wide active run, so that nothing outside this logger
sees or changes its run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import _locking as locking
from ..._output import library_logs_to_root
from ...config.recipe import cache_dir
from ...errors import ZooError
from . import tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient

# What MLflow's store accepts in one call and in one parameter's value.
BATCH = 100
MAX_VALUE = 6000
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class MlflowLogger:
    """Parameters, tags, metrics and the run folder's files in an MLflow run."""

    def __init__(
        self, experiment: str | None = None, tracking_uri: str | None = None, artifact_location: str | None = None
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ZooError("the mlflow logger needs MLflow: pip install 'zoo[mlflow]'")
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        self.tracking_uri, self.artifact_location = tracking_uri, artifact_location
        self._client: MlflowClient | None = None
        self.run_id = ""

    def start(self, recipe: Mapping[str, Any], run: Path, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        for variable, value in RETRIES.items():  # MLflow's defaults retry a dead server for minutes
            os.environ.setdefault(variable, value)
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        library_logs_to_root("mlflow", "alembic")
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _cached_store()
        known = tracking.remembered_run(run, "mlflow") if step else None
        logged: dict[str, str] = {}
        with _one_at_a_time(uri):  # creating the store, the experiment and the run
            client = self._client = MlflowClient(uri)
            if known and _exists(client, known):
                self.run_id = known
                client.update_run(known, status="RUNNING")
                logged = client.get_run(known).data.params
            else:
                name = self.experiment or recipe["name"]
                found = client.get_experiment_by_name(name)
                artifacts = self.artifact_location or _beside(uri)
                experiment_id = found.experiment_id if found else client.create_experiment(name, artifacts)
                self.run_id = client.create_run(experiment_id, run_name=run.name).info.run_id
                tracking.remember_run(run, "mlflow", self.run_id)
        values = {key: str(value)[:MAX_VALUE] for key, value in tracking.parameters(recipe).items()}
        # A parameter's value cannot change in MLflow: what a resume changed (train.epochs=5) is a tag.
        params = [Param(key, value) for key, value in values.items() if key not in logged]
        changed = [RunTag(f"resumed.{key}", value) for key, value in values.items() if logged.get(key, value) != value]
        run_tags = [RunTag(key, value) for key, value in tracking.tags(recipe).items()] + changed
        for start in range(0, max(len(params), len(run_tags)), BATCH):
            client.log_batch(self.run_id, params=params[start : start + BATCH], tags=run_tags[start : start + BATCH])

    def log(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        self._log_metrics(tracking.metric_names(metrics, epoch), step)

    def finish(self, results: Mapping[str, Any], files: Sequence[Path]) -> None:
        client = self._client
        if client is None:
            return
        self._log_metrics(tracking.final_metrics(results), results.get("steps") or 0)
        for file in files:
            client.log_artifact(self.run_id, str(file))
        client.set_terminated(self.run_id, status=STATUS.get(results.get("state", ""), "FAILED"))
        self._client = None

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        assert self._client is not None, "start() comes before log()"
        now = int(time.time() * 1000)
        entries = [Metric(key, value, now, step) for key, value in metrics.items()]
        for start in range(0, len(entries), BATCH):
            self._client.log_batch(self.run_id, metrics=entries[start : start + BATCH])


def _cached_store() -> str:
    """A database in zoo's cache: where runs go when the user names no MLflow store."""
    folder = cache_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _database(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for a server or another store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def _beside(uri: str) -> str | None:
    """A ``sqlite:///`` store's artifacts beside its database (MLflow's default is the working folder)."""
    database = _database(uri)
    return None if database is None else str(database.resolve().parent / "mlartifacts")  # else the store decides


def _one_at_a_time(uri: str) -> contextlib.AbstractContextManager[None]:
    """A lock on a ``sqlite:///`` store while it is opened: MLflow creates and migrates a new database in place,
    and two runs doing so at once left it broken for every later run; two creating one experiment, one failed."""
    database = _database(uri)
    # Resolved: two spellings of one database (a link to it) share one lock.
    return contextlib.nullcontext() if database is None else locking.locked(database.resolve())


def _exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the store holds ``run_id`` (a resume against another store starts a new run)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True
