"""A small synthetic multi-label image set for the tests and the benchmark: shapes placed on a canvas."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("bar", "cross", "disc", "square")


def shapes_canvas(
    root: Path, train: int = 240, test: int = 80, val: int = 0, size: int = 28, seed: int = 0, single: bool = False
) -> Path:
    """``root`` with train.csv, test.csv (and val.csv with ``val`` rows) listing grayscale PNGs:
    each shape of ``SHAPES`` is on a canvas with probability 0.4, in its own random place, so an
    image holds none, one or several; its labels are the shapes drawn. ``single``: one shape an image."""
    generator = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    counts = {"train": train, "test": test, "val": val}
    for split, count in counts.items():
        if not count:
            continue
        rows = []
        for number in range(count):
            image = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(image)
            drawn = [shape for shape in SHAPES if generator.random() < 0.4]
            if single:
                drawn = [SHAPES[int(generator.integers(len(SHAPES)))]]
            for shape in drawn:
                x, y = (int(v) for v in generator.integers(0, size - 9, 2))
                if shape == "bar":
                    draw.rectangle((x, y + 3, x + 8, y + 5), fill=255)
                elif shape == "cross":
                    draw.line((x, y, x + 8, y + 8), fill=255, width=2)
                    draw.line((x, y + 8, x + 8, y), fill=255, width=2)
                elif shape == "disc":
                    draw.ellipse((x, y, x + 8, y + 8), fill=255)
                else:
                    draw.rectangle((x, y, x + 8, y + 8), outline=255, width=2)
            name = f"images/{split}{number}.png"
            image.save(root / name)
            rows.append({"image": name, "labels": " ".join(drawn)})
        with open(root / f"{split}.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["image", "labels"])
            writer.writeheader()
            writer.writerows(rows)
    return root
