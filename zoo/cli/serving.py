"""``zoo serve`` and ``zoo tune``: a fine-tuned run behind an HTTP endpoint, and a recipe's settings searched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from ..errors import ZooError
from .group import print_table


@click.command()
@click.argument("run_folder", metavar="RUN")
@click.option(
    "--backend", default="torch", show_default=True, type=click.Choice(["torch", "onnxruntime"]),
    help="torch: the run's weights; onnxruntime: its exported model.onnx (`zoo export RUN --format onnx`).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: a free one).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1), help="Images per model call.")
@click.option(
    "--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0),
    help="How long the first image of a batch waits for others.",
)  # fmt: skip
def serve(run_folder: str, backend: str, host: str, port: int, max_batch: int, max_wait_ms: float) -> None:
    """Serve a run over HTTP: POST /predict, GET /health, GET /metadata, and the OpenAPI page /docs.

    RUN is a run folder, or 'registry:NAME' or 'hf-hub:ORG/NAME[@REVISION]' (pulled and checked
    first), as for `zoo predict`, whose --json answers /predict gives: send images in the
    multipart form field 'files', e.g. `curl -F files=@digit.png 'http://127.0.0.1:8000/predict?top_k=3'`.
    Requests arriving together go through the model as one batch. SIGTERM or Ctrl-C lets the
    requests in flight finish, then stops.
    """
    _require("serve", "fastapi", "uvicorn", "multipart")
    from ..serving.app import Limits, create_app, load_served
    from ..serving.server import bind, run

    served = load_served(run_folder, backend)
    app = create_app(served, Limits(max_batch=max_batch, max_wait_ms=max_wait_ms))
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    def ready() -> None:
        click.echo(f"serving {run_folder} ({backend}) on http://{shown}:{bound_port} (API: /docs)")

    run(app, sock, ready)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--trials", type=click.IntRange(min=1), help="Trials the study holds at the end (default: tune.trials).")
@click.option("--timeout", type=click.FloatRange(min=0), help="Start no trial after this many seconds.")
@click.option("--study", "study_dir", type=click.Path(path_type=Path), help="The study folder (default: studies/NAME).")
@click.option(
    "--nproc", default=1, show_default=True, type=click.IntRange(min=1), help="Processes per trial (torchrun)."
)
def tune(
    recipe: Path, overrides: tuple[str, ...], trials: int | None, timeout: float | None, study_dir: Path | None,
    nproc: int,
) -> None:  # fmt: skip
    """Search the settings that the recipe's [tune] table names, with Optuna.

    \b
    [tune]
    metric = "val_accuracy"          # one of train.monitor's values
    trials = 20
    space = { "optim.lr" = { low = 1e-4, high = 1e-1, log = true }, "data.batch_size" = [64, 128, 256] }

    Each trial is an ordinary run folder in the study folder (`zoo run` with the trial's values as
    overrides, KEY=VALUE overrides given here under them); trials worse than the median after an
    epoch are pruned. The study is kept in STUDY/study.journal: running the same command again
    continues it. At the end: a table of the trials, STUDY/best.toml (the best trial's recipe,
    for `zoo run`) and STUDY/trials.png.
    """
    _require("tune", "optuna")
    from ..tuning.study import tune as run_study

    result = run_study(recipe, overrides, study_dir, trials, timeout, nproc)
    rows = [
        [str(t.number), t.state, "-" if t.value is None else f"{t.value:.4f}",
         " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in t.params.items()),
         str(t.folder)]
        for t in result.trials
    ]  # fmt: skip
    print_table(rows, ["TRIAL", "STATE", result.metric.upper(), "VALUES", "RUN"])
    click.echo(f"{result.ran} trial(s) run now, {len(result.trials)} in {result.folder}")
    if result.best is not None:
        click.echo(f"best: trial {result.best.number}, {result.metric} {result.best.value:.4f}")
        click.echo(f"wrote {result.folder / 'best.toml'} (zoo run it) and {result.folder / 'trials.png'}")


def _require(extra: str, *modules: str) -> None:
    """The optional libraries a command needs, or one line saying how to install them."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ZooError(f"zoo {extra} needs {', '.join(missing)}: pip install 'zoo[{extra}]'")
