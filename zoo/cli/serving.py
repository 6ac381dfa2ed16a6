"""``zoo serve`` and ``zoo tune``: a fine-tuned run behind an HTTP endpoint, and a recipe's settings searched."""

from __future__ import annotations

import click


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
