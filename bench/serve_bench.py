"""Serving speed: `zoo serve` with and without batching, against a one-image-per-call loop over `zoo.load`.

    python bench/serve_bench.py                     # about two minutes on 2 cores
    python bench/serve_bench.py --image-size 64 --seconds 3 --clients 1 8

A run folder of timm's resnet10t (random weights: speed does not depend on them; one training
step on MNIST digits written as PNGs, so it is an ordinary run folder) is served by a real
`zoo serve` process (uvicorn) on a free 127.0.0.1 port, twice:

  batched    --max-batch 32 --max-wait-ms 5 (the defaults)
  unbatched  --max-batch 1 --max-wait-ms 0: one model call per image

For each, 1, 8 and 32 clients (asyncio tasks with an httpx client each, in this process) send one
PNG per request, each in a loop, for --seconds after a warm-up; reported: requests/s and each
request's latency (p50, p99). Beside them, `loop`: this process decoding each PNG and calling the
model loaded by `zoo.load` on it, one image per call, with no HTTP, from the main thread and from
a worker thread as `zoo serve` calls it (on a CPU shared with other work, torch's OpenMP threads
in the main thread can be many times slower). The clients share the cores with the server, as
they would on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

import zoo
from zoo.config import recipe as recipes
from zoo.data.images import image_file
from zoo.data.mnist import write_image_folder
from zoo.data.transforms import build_transform
from zoo.runs.folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "batched": ["--max-batch", "32", "--max-wait-ms", "5"],
    "unbatched": ["--max-batch", "1", "--max-wait-ms", "0"],
}


def make_run(folder: Path, backbone: str, size: int) -> tuple[Path, list[Path]]:
    images = write_image_folder(recipes.default_data_dir(), folder / "png", {"train": 4, "test": 4})
    overrides = [
        f"model.backbone={backbone}", "model.pretrained=false", f"data.root={images}", f"data.image_size={size}",
        "data.val_split=0", "train.monitor=train_loss", "train.max_steps=1", "train.epochs=1", "data.num_workers=0",
        "data.cache=none", f"output.dir={folder / 'run'}", "train.layer_decay=0.7",
    ]  # fmt: skip
    # In a process of its own: this one times the model afterwards, untouched by what training set up.
    zoo_run = [str(Path(sys.executable).with_name("zoo")), "run", str(REPO / "recipes" / "timm_finetune.toml")]
    subprocess.run([*zoo_run, *overrides, "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return folder / "run", sorted(images.glob("test/*/*.png"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def load(url: str, pngs: list[bytes], clients: int, seconds: float) -> tuple[float, list[float]]:
    """``clients`` request loops for ``seconds``: requests/s and every request's latency."""
    latencies: list[float] = []

    async def client(index: int, until: float, record: bool) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            n = index
            while time.perf_counter() < until:
                started = time.perf_counter()
                answer = await http.post(url, files=[("files", (f"{n}.png", pngs[n % len(pngs)], "image/png"))])
                answer.raise_for_status()
                if record:
                    latencies.append(time.perf_counter() - started)
                n += clients

    await asyncio.gather(*(client(i, time.perf_counter() + 1.0, False) for i in range(clients)))  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(client(i, started + seconds, True) for i in range(clients)))
    return len(latencies) / (time.perf_counter() - started), latencies


def serve(run_folder: Path, mode: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    zoo_command = str(Path(sys.executable).with_name("zoo"))
    with log.open("w") as out:
        process = subprocess.Popen([zoo_command, "serve", str(run_folder), "--port", "0", *mode], stdout=out,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
    while "serving" not in log.read_text():
        if process.poll() is not None:
            raise SystemExit(f"zoo serve stopped: exit {process.returncode}")
        time.sleep(0.1)
    return process, log.read_text().split(" on ")[1].split()[0]


def loop(run_folder: Path, paths: list[Path], seconds: float, in_thread: bool) -> tuple[float, list[float]]:
    """One image per call through `zoo.load`'s model, decoding included; the model called from this thread, or
    (``in_thread``) from a worker thread, as `zoo serve` calls it."""
    model = zoo.load(run_folder)
    transform = build_transform(RunFolder(run_folder).preprocessing)

    @torch.no_grad()
    def predict(path: Path) -> torch.Tensor:
        with image_file(path) as image:
            return model(transform(image).unsqueeze(0))

    latencies: list[float] = []
    with ThreadPoolExecutor(max_workers=1) as worker:
        until, n = time.perf_counter() + seconds + 1.0, 0
        while time.perf_counter() < until:
            started = time.perf_counter()
            worker.submit(predict, paths[n % len(paths)]).result() if in_thread else predict(paths[n % len(paths)])
            if time.perf_counter() > until - seconds:
                latencies.append(time.perf_counter() - started)
            n += 1
    return len(latencies) / sum(latencies), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="timm/resnet10t")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per row")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        run_folder, paths = make_run(Path(tmp), args.backbone, args.image_size)
        pngs = [path.read_bytes() for path in paths]
        rows = []
        for where, in_thread in (("this thread", False), ("a worker thread", True)):
            rate, latencies = loop(run_folder, paths, args.seconds, in_thread)
            rows.append((f"loop over zoo.load, model in {where}, no HTTP", 1, rate, latencies))
        for name, mode in MODES.items():
            process, url = serve(run_folder, mode, Path(tmp) / f"{name}.log")
            try:
                for clients in args.clients:
                    rate, latencies = asyncio.run(load(f"{url}/predict", pngs, clients, args.seconds))
                    rows.append((f"zoo serve, {name}", clients, rate, latencies))
            finally:
                process.terminate()
                process.wait()
    print(
        f"\n{args.backbone}, 3x{args.image_size}x{args.image_size}, one PNG per request, {args.seconds:g} s per row\n"
    )
    print("| server | clients | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, clients, rate, latencies in rows:
        p50, p99 = (1000 * percentile(latencies, q) for q in (0.5, 0.99))
        print(f"| {name} | {clients} | {rate:.1f} | {p50:.1f} | {p99:.1f} |")
    by = {(name, clients): rate for name, clients, rate, _ in rows}
    top = max(args.clients)
    ratio = by[("zoo serve, batched", top)] / by[("zoo serve, unbatched", top)]
    print(f"\nbatched / unbatched at {top} clients: {ratio:.2f}x")


if __name__ == "__main__":
    main()
