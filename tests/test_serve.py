"""`zoo serve`: answers as `zoo predict --json` gives them, batching, every bad request a 4xx JSON error, SIGTERM.

In process through FastAPI's TestClient, and as users run it: `zoo serve` (uvicorn) on a free
loopback port, with concurrent clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, zoo_command
from fastapi.testclient import TestClient
from PIL import Image

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.data.mnist import write_image_folder
from zoo.inference.export import export_run
from zoo.inference.predict import predict_files
from zoo.plugins import _registry as registry
from zoo.serving.app import Limits, create_app, load_served
from zoo.serving.batching import MicroBatcher
from zoo.training.runner import run


@pytest.fixture(scope="module")
def served_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "run"
    overrides = ["data.classes=[3,7]", "data.per_class=30", "train.epochs=1", f"output.dir={folder}"]
    run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> list[Path]:
    """Twenty PNG digits, two of each."""
    folder = write_image_folder(mnist_dir, tmp_path_factory.mktemp("digits"), {"test": 2})
    return sorted(folder.glob("test/*/*.png"))


@pytest.fixture
def client(served_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_served(str(served_run), "torch"), Limits(max_files=4, max_body=200_000))) as client:
        yield client


def upload(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.parent.name + "-" + path.name, path.read_bytes(), "image/png")) for path in paths]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_same_predictions(answer: list[dict], expected: list[dict]) -> None:
    assert [prediction["file"] for prediction in answer] == [prediction["file"] for prediction in expected]
    for got, want in zip(answer, expected):
        assert [top["label"] for top in got["top"]] == [top["label"] for top in want["top"]]
        assert [top["probability"] for top in got["top"]] == pytest.approx(
            [top["probability"] for top in want["top"]], abs=1e-5
        )


def test_predict_answers_as_zoo_predict_json(client: TestClient, served_run: Path, digits: list[Path]) -> None:
    chosen = digits[6:9]
    answer = client.post("/predict?top_k=1", files=upload(*chosen))
    assert answer.status_code == 200, answer.text
    expected, errors = predict_files(served_run, chosen, 1)
    assert not errors
    for prediction, path in zip(expected, chosen):
        prediction["file"] = path.parent.name + "-" + path.name
    assert_same_predictions(answer.json()["predictions"], expected)
    both = client.post("/predict", files=upload(digits[0])).json()["predictions"][0]["top"]
    assert [top["label"] for top in both] in (["3", "7"], ["7", "3"])  # top_k 3 of two labels: both


def test_health_metadata_and_the_openapi_page(client: TestClient, served_run: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    metadata = client.get("/metadata").json()
    assert metadata["labels"] == ["3", "7"] and metadata["backend"] == "torch"
    assert metadata["sha256"] == hashlib.sha256((served_run / "model.safetensors").read_bytes()).hexdigest()
    assert metadata["source"] == served_run.name and metadata["weights"] == "model.safetensors"
    assert str(served_run.parent) not in client.get("/metadata").text  # what the model is, not where it lies here
    assert metadata["preprocessing"]["input_size"] == [1, 28, 28] and metadata["preprocessing"]["mean"] == [0.1307]
    page = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert "multipart/form-data" in page["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def bomb() -> bytes:
    """A small PNG that would decode to 100 million pixels."""
    return png(Image.new("1", (10_000, 10_000)))


BAD_REQUESTS = {
    "no part": (
        {"content": b"--x--\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        422,
        "no file",
    ),
    "text, not a file": (
        {"data": {"files": "x"}, "files": [("files", ("a.png", b"x", "image/png"))]},
        422,
        "holds text",
    ),
    "no field at all": ({"files": [("other", ("a.png", b"x", "image/png"))]}, 422, "unknown form field 'other'"),
    "too many files": ({"files": [("files", (f"{i}.png", b"x", "image/png")) for i in range(5)]}, 413, "at most 4"),
    "wrong content type": ({"json": {"files": []}}, 415, "multipart/form-data"),
    "undecodable": ({"files": [("files", ("notes.png", b"not an image", "image/png"))]}, 422, "notes.png is not"),
    "truncated": ({"files": [("files", ("cut.png", b"TRUNCATED", "image/png"))]}, 422, "cut.png is not a readable"),
    "bomb": ({"files": [("files", ("bomb.png", b"BOMB", "image/png"))]}, 422, "bomb.png is too large to decode"),
    "body too large": ({"files": [("files", ("big.png", b"\0" * 300_000, "image/png"))]}, 413, "request body is over"),
    "top_k zero": ({"files": [("files", ("a.png", b"x", "image/png"))], "params": {"top_k": 0}}, 422, "top_k"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_every_bad_request_is_a_4xx_json_error_and_the_server_goes_on(
    client: TestClient, digits: list[Path], case: str
) -> None:
    request, status, fragment = BAD_REQUESTS[case]
    for name, (filename, data, kind) in [part for part in request.get("files", [])]:
        if data == b"TRUNCATED":
            request["files"] = [(name, (filename, digits[0].read_bytes()[:120], kind))]
        elif data == b"BOMB":
            request["files"] = [(name, (filename, bomb(), kind))]
    answer = client.post("/predict", **request)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"]
    assert client.post("/predict", files=upload(digits[1])).status_code == 200


def test_a_bad_image_among_good_ones_names_it(client: TestClient, digits: list[Path]) -> None:
    files = [
        *upload(digits[2]),
        ("files", ("broken.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg")),
        *upload(digits[3]),
    ]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 422 and "broken.jpg is not a readable image" in answer.json()["error"]
    assert "BytesIO" not in answer.json()["error"]  # the upload's name, not PIL's buffer
    assert client.post("/predict", files=upload(digits[2], digits[3])).status_code == 200


def test_an_image_too_elongated_to_resize_is_refused_before_decoding(
    client: TestClient, served_run: Path, digits: list[Path], tmp_path: Path
) -> None:
    """A 2 KB PNG of 1 x 2,000,000 pixels passes the pixel limit, but scaled to the model's size its
    shorter side would make it 28 x 56,000,000: refused from its header, by serve and by predict."""
    strip = tmp_path / "strip.png"
    Image.new("L", (2_000_000, 1), 128).save(strip)
    assert strip.stat().st_size < 10_000
    answer = client.post("/predict", files=upload(strip))
    assert answer.status_code == 422 and "strip.png is 2000000x1 pixels: too elongated" in answer.json()["error"]
    assert client.post("/predict", files=upload(digits[2])).status_code == 200
    predicted = zoo_command("predict", str(served_run), str(strip), str(digits[2]))
    assert predicted.returncode != 0 and "too elongated to resize" in predicted.stderr
    assert predicted.stdout.count(":") == 1  # the good image is still predicted


def bn_cnn(in_chans: int = 1) -> torch.nn.Module:
    """A small CNN with BatchNorm, whose answers must not depend on the batch they are computed in."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(in_chans, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )  # fmt: skip
    model.num_features = 32
    return model


@pytest.mark.slow
def test_a_batchnorm_model_answers_alike_batched_or_alone(tmp_path: Path, mnist_dir: Path, digits: list[Path]) -> None:
    zoo.register_model("bn_cnn")(bn_cnn)
    try:
        overrides = ["model.backbone=bn_cnn", "data.classes=[3,7]", "data.per_class=30", "train.epochs=1"]
        run(recipes.load(RECIPES / "mnist.toml", [*overrides, f"output.dir={tmp_path / 'bn'}"]), progress=False)
        served = load_served(str(tmp_path / "bn"), "torch")
    finally:
        registry.unregister("model", "bn_cnn")
    with TestClient(create_app(served, Limits(max_batch=8, max_wait_ms=300))) as client:

        def answer(path: Path) -> dict:
            return client.post("/predict", files=upload(path)).json()["predictions"][0]

        alone = [answer(path) for path in digits[:6]]
        assert client.get("/metadata").json()["batching"]["largest_batch"] == 1
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(answer, digits[:6]))
        assert client.get("/metadata").json()["batching"]["largest_batch"] > 1
    assert_same_predictions(together, alone)


def test_a_body_without_a_length_is_cut_at_the_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"\0" * 10_000

    answer = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "over 200,000 bytes" in answer.json()["error"]


def test_requests_arriving_together_share_a_model_call_and_get_their_own_logits() -> None:
    calls = []

    def classify(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        time.sleep(0.05)  # while the model computes, the next requests queue up
        return images.flatten(1)[:, :2] * 2

    async def main() -> list[torch.Tensor]:
        batcher = MicroBatcher(classify, max_batch=8, max_wait=0.05)
        batcher.start()
        requests = [torch.full((size, 1, 2, 2), float(i)) for i, size in enumerate([1, 2, 3, 2, 9, 1])]
        answers = await asyncio.gather(*(batcher.logits(images) for images in requests))
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    for i, (logits, size) in enumerate(zip(answers, [1, 2, 3, 2, 9, 1])):
        assert torch.equal(logits, torch.full((size, 2), 2.0 * i))
    assert sum(calls) == 18 and max(calls) == 8  # the request of 9 went through in chunks of 8 and 1
    assert calls[0] == 8  # the first four requests (1+2+3+2 images) in one call


def test_a_failing_model_fails_its_requests_not_the_batcher() -> None:
    def classify(images: torch.Tensor) -> torch.Tensor:
        if (images < 0).any():
            raise RuntimeError("the model broke")
        return images.flatten(1)

    async def main() -> torch.Tensor:
        batcher = MicroBatcher(classify, max_batch=4, max_wait=0.0)
        batcher.start()
        with pytest.raises(RuntimeError, match="the model broke"):
            await batcher.logits(-torch.ones(1, 1))
        answer = await batcher.logits(torch.ones(1, 1))
        await batcher.stop()
        return answer

    assert torch.equal(asyncio.run(main()), torch.ones(1, 1))


def test_mistakes_on_the_command_line_are_one_line(served_run: Path, tmp_path: Path) -> None:
    assert_user_error(CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing")]), "nothing")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(served_run), "--port", str(port)])
        assert_user_error(result, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_help_imports_no_server_or_tuning_library() -> None:
    result = zoo_command("--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "click" in modules and not {"fastapi", "uvicorn", "starlette", "optuna"} & modules


class Server:
    """`zoo serve RUN --port 0 ARGS` in a subprocess, its output in files; ``url`` once it listens."""

    def __init__(self, run_folder: Path, *args: str, verbose: bool = False) -> None:
        zoo = str(Path(sys.executable).with_name("zoo"))
        self.out, self.err = (run_folder.parent / f"serve-{os.getpid()}.{name}" for name in ("out", "err"))
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [zoo, *["--verbose"] * verbose, "serve", str(run_folder), "--port", "0", *args], stdout=out, stderr=err
            )
        deadline = time.monotonic() + 120
        while "serving" not in self.out.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, self.err.read_text()
            time.sleep(0.1)
        self.url = self.out.read_text().split(" on ")[1].split()[0]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def test_concurrent_clients_of_uvicorn_get_their_own_answers(served_run: Path, digits: list[Path]) -> None:
    expected, _ = predict_files(served_run, digits, 2)
    server = Server(served_run, "--max-wait-ms", "100")
    try:
        start = threading.Barrier(len(digits) + 1)

        def one(index: int) -> httpx.Response:
            files = upload(digits[index]) if index < len(digits) else [("files", ("bad.png", b"???", "image/png"))]
            start.wait()
            return httpx.post(f"{server.url}/predict", params={"top_k": 2}, files=files, timeout=60)

        with ThreadPoolExecutor(len(digits) + 1) as pool:
            answers = list(pool.map(one, range(len(digits) + 1)))
        *good, bad = answers
        assert bad.status_code == 422 and "bad.png" in bad.json()["error"]
        for answer, path, want in zip(good, digits, expected):
            assert answer.status_code == 200, answer.text
            assert_same_predictions(answer.json()["predictions"], [{**want, "file": f"{path.parent.name}-{path.name}"}])
        batching = httpx.get(f"{server.url}/metadata").json()["batching"]
        assert batching["images"] == len(digits) and batching["largest_batch"] > 1  # requests shared model calls
    finally:
        assert server.stop() == 0
    assert len(server.out.read_text().splitlines()) == 1  # zoo's line saying where it serves
    assert server.err.read_text() == ""  # uvicorn's INFO lines, requests too, only with --verbose


FAILING_SERVER = """
from fastapi import FastAPI
from zoo.cli.group import route_library_output
from zoo.serving.server import bind, run

route_library_output(verbose=False)
app = FastAPI()


@app.get("/bug")
def bug():
    raise RuntimeError("an internal bug in a route")


sock = bind("127.0.0.1", 0)
run(app, sock, lambda: print(sock.getsockname()[1], flush=True))
"""


def test_an_internal_bug_in_a_request_prints_its_traceback_without_verbose(tmp_path: Path) -> None:
    """A 500 from a bug is never swallowed: uvicorn's ERROR record and traceback reach stderr, INFO lines don't."""
    err = tmp_path / "serve.err"
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", FAILING_SERVER], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        port = process.stdout.readline().strip()
        assert port, err.read_text()
        answer = httpx.get(f"http://127.0.0.1:{port}/bug", timeout=60)
        assert answer.status_code == 500
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    log = err.read_text()
    assert "ERROR uvicorn.error: Exception in ASGI application" in log
    assert "Traceback (most recent call last)" in log and "RuntimeError: an internal bug in a route" in log
    assert "INFO" not in log and "uvicorn.access" not in log  # the access and startup lines: --verbose only


def test_sigterm_lets_the_requests_in_flight_finish_then_exits_0(served_run: Path, digits: list[Path]) -> None:
    server = Server(served_run, "--max-wait-ms", "1500", verbose=True)  # the requests wait in the batcher
    with ThreadPoolExecutor(4) as pool:
        pending = [
            pool.submit(httpx.post, f"{server.url}/predict", files=upload(path), timeout=60) for path in digits[:4]
        ]
        time.sleep(0.7)
        assert all(not future.done() for future in pending)
        os.kill(server.process.pid, signal.SIGTERM)
        answers = [future.result() for future in pending]
    assert [answer.status_code for answer in answers] == [200] * 4
    assert [answer.json()["predictions"][0]["file"] for answer in answers] == [
        f"{path.parent.name}-{path.name}" for path in digits[:4]
    ]
    assert server.process.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
    assert "INFO uvicorn.access" in server.err.read_text()  # --verbose: uvicorn's log, through zoo's handler


@pytest.mark.slow
def test_the_onnxruntime_backend_serves_the_export_with_the_same_answers(
    served_run: Path, tmp_path: Path, digits: list[Path]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(served_run, copy, ignore=shutil.ignore_patterns("checkpoints", ".zoo.lock"))
    export_run(copy, "onnx", dynamic_batch=True)
    torch_app = create_app(load_served(str(copy), "torch"))
    onnx_app = create_app(load_served(str(copy), "onnxruntime"), Limits(max_wait_ms=200))
    with TestClient(torch_app) as torch_client, TestClient(onnx_app) as onnx_client:
        expected = torch_client.post("/predict", files=upload(*digits[:5])).json()["predictions"]
        with ThreadPoolExecutor(5) as pool:  # one request per image, batched together
            answers = list(pool.map(lambda path: onnx_client.post("/predict", files=upload(path)), digits[:5]))
        metadata = onnx_client.get("/metadata").json()
    assert_same_predictions([answer.json()["predictions"][0] for answer in answers], expected)
    assert metadata["backend"] == "onnxruntime" and metadata["weights"] == "model.onnx"
    assert metadata["sha256"] == hashlib.sha256((copy / "model.onnx").read_bytes()).hexdigest()
    assert metadata["batching"]["largest_batch"] > 1


@pytest.mark.slow
def test_the_serve_bench_runs_both_servers_and_the_loop(mnist_dir: Path) -> None:
    arguments = ["--image-size", "32", "--seconds", "0.5", "--clients", "1", "2"]
    bench = [sys.executable, str(RECIPES.parent / "bench" / "serve_bench.py"), *arguments]
    result = subprocess.run(bench, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "requests/s" not in line]
    assert len(rows) == 2 + 2 * 2, result.stdout  # the loop twice, each server at 1 and 2 clients
    assert all(float(row.split("|")[3]) > 0 for row in rows)
    assert "batched / unbatched at 2 clients" in result.stdout
