"""The HTTP app of `zoo serve`: ``POST /predict``, ``GET /health``, ``GET /metadata`` (and FastAPI's /docs).

The model is the one `zoo predict` runs (``zoo.inference.predict.classifier``), on a RUN resolved
and checked as `zoo predict` resolves it; its answers have `zoo predict --json`'s form. A bad
request (no file, too many, a wrong content type, an image that does not decode or is too large,
a body over the limit) is a 4xx answer ``{"error": "..."}`` naming the problem, and the server
goes on; only a bug answers 500.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._files import read_file
from .._version import __version__
from ..config.sources import names_remote
from ..data.images import image_bytes
from ..data.preprocessing import Preprocessing
from ..data.transforms import build_transform, check_resizable
from ..errors import ZooError
from ..inference.predict import Backend, Classify, classifier, ranked
from ..runs.exports import FILES
from ..runs.folder import RunFolder
from ..sharing.resolve import local_run_folder
from .batching import MicroBatcher

FIELD = "files"  # the multipart form field that holds the images


@dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_files: int = 64  # images per request
    max_body: int = 64 << 20  # bytes per request
    max_pixels: int = 24_000_000  # per image (a 24-megapixel photo), checked before decoding


@dataclass(frozen=True)
class Served:
    """A run ready to serve: its model and what /metadata says of it."""

    classify: Classify
    label_names: list[str]
    preprocessing: Preprocessing
    thresholds: list[float] | None  # a multi-label run's, one per label
    temperature: float  # a calibrated run's (1: not calibrated)
    source: str  # RUN as given when it names a registry entry or Hub repo; else the run folder's name
    backend: Backend
    weights: str  # the name of the file in the run folder the model was read from
    sha256: str


def load_served(run: str, backend: Backend) -> Served:
    """RUN (a run folder, 'registry:NAME' or 'hf-hub:ORG/NAME[@REV]', pulled and checked) loaded for serving."""
    folder = RunFolder.existing(local_run_folder(run))
    classify, label_names, preprocessing, thresholds, temperature = classifier(folder, backend)
    weights = folder.file(FILES["onnx"] if backend == "onnxruntime" else RunFolder.WEIGHTS)
    data = read_file(weights, limit=None)
    if data is None:  # removed between loading and now
        raise ZooError(f"{weights} disappeared while the model loaded")
    sha256 = hashlib.sha256(data).hexdigest()
    # /metadata says what the model is to anyone who asks: never where this machine keeps it.
    source = run if names_remote(run) else folder.path.resolve().name
    return Served(classify, label_names, preprocessing, thresholds, temperature, source, backend, weights.name, sha256)


def create_app(served: Served, limits: Limits = Limits()) -> ASGIApp:
    """The ASGI app serving ``served``: FastAPI's, behind the request body limit."""
    batcher = MicroBatcher(served.classify, limits.max_batch, limits.max_wait_ms / 1000)
    transform = build_transform(served.preprocessing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        batcher.start()
        yield
        await batcher.stop()  # after uvicorn drained the requests in flight

    app = FastAPI(title="zoo serve", version=__version__, lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, 422)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """200 once the model is loaded (it is loaded before the server listens)."""
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """The labels, the preprocessing, where the weights come from and their sha256, the backend."""
        return {
            "labels": served.label_names,
            "preprocessing": served.preprocessing.to_config(),
            "thresholds": served.thresholds,
            "temperature": served.temperature,
            "source": served.source,
            "weights": served.weights,
            "sha256": served.sha256,
            "backend": served.backend,
            "batching": {"max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms,
                         "model_calls": batcher.calls, "images": batcher.images,
                         "largest_batch": batcher.largest_batch},
            "limits": {"max_files": limits.max_files, "max_body": limits.max_body, "max_pixels": limits.max_pixels},
        }  # fmt: skip

    @app.post("/predict", openapi_extra=_UPLOAD_SCHEMA)
    async def predict(request: Request, top_k: int = Query(3, ge=1, description="labels per image")) -> dict:
        """Top-k labels of each image in the multipart form field `files`, in order."""
        uploads = await _uploads(request, limits.max_files)
        images = await run_in_threadpool(_decoded, uploads, transform, served.preprocessing, limits.max_pixels)
        logits = await batcher.logits(images)
        names = [name for name, _ in uploads]
        return {"predictions": ranked(logits, names, served.label_names, top_k, served.thresholds, served.temperature)}

    return BodyLimit(app, limits.max_body)


async def _uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The request's images, by file name, checked to be files in the form field ``files``."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(
            415, f"send the images as multipart/form-data in the field '{FIELD}', not as {content_type or 'no type'}"
        )
    try:
        form = await request.form(max_files=max_files, max_fields=max_files)
    except HTTPException as exc:  # Starlette's words for python-multipart's limits and parse errors
        if str(exc.detail).startswith("Too many"):
            raise HTTPException(413, f"too many files or fields: at most {max_files} images a request") from None
        raise HTTPException(400, f"the multipart form cannot be read: {exc.detail}") from None
    try:
        other = sorted(key for key in form if key != FIELD)
        if other:
            raise HTTPException(422, f"unknown form field '{other[0]}': the images go in the field '{FIELD}'")
        files = form.getlist(FIELD)
        if not files:
            raise HTTPException(422, f"no file: send one or more images in the multipart form field '{FIELD}'")
        if not all(isinstance(file, UploadFile) for file in files):
            raise HTTPException(422, f"the field '{FIELD}' holds text: send image files (with a file name)")
        return [(file.filename or f"{FIELD}[{index}]", await file.read()) for index, file in enumerate(files)]
    finally:
        await form.close()


def _decoded(
    uploads: list[tuple[str, bytes]], transform: Callable[[Any], Any], preprocessing: Preprocessing, max_pixels: int
) -> torch.Tensor:
    """The uploads as one batch of the model's inputs; an image that does not decode, or would not
    resize within bounds, fails the request (422)."""
    images = []
    for name, data in uploads:
        try:
            with image_bytes(data, name, decode=False, max_pixels=max_pixels) as image:
                check_resizable(image.size, preprocessing, name)  # from the header, before decoding
                image.load()
                images.append(transform(image))
        except ZooError as exc:
            raise HTTPException(422, str(exc)) from None
    return torch.stack(images)


class BodyLimit:
    """An ASGI wrapper that answers 413 to a request body over ``limit`` bytes, before the app reads any of it.

    The body is read here first (declared by Content-Length or not), so the app parses at most
    ``limit`` bytes of it, then handed on whole.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()  # a disconnect, for whoever waits for one
            message, body = body, None
            return message

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = {"error": f"the request body is over {self.limit:,} bytes, the limit of this server"}
        await JSONResponse(error, 413, headers={"connection": "close"})(scope, receive, send)


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
