"""The model card: the run folder's README.md, as the Hugging Face Hub reads it.

The front matter is written by ``huggingface_hub.ModelCardData`` (library, tags, datasets,
base model, license, and the test results as ``model-index``), so that the Hub and
``huggingface_hub.ModelCard`` parse what zoo writes. ``datasets`` names a Hub dataset only when
the dataset plugin declares one (``hub_dataset``): a plugin name such as ``image_folder`` is not
one. `zoo export` rewrites the card's section on exported files, between its markers.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from ..config.schema import Recipe
from .folder import RunResults
from .table import training_notes

# A multi-label run's test results lead with mAP; its accuracy is the share of images with every label right.
METRICS = ("mAP", "mAP_micro", "accuracy", "precision", "recall", "f1")
CONFUSIONS = 5  # the most frequent confusions the card lists
EXPORTS_BEGIN, EXPORTS_END = "<!-- zoo:exports -->", "<!-- /zoo:exports -->"
HOW_TO_RUN = {
    "model.onnx": """`model.onnx` (ONNX; label names and preprocessing in its metadata props):

```python
import json, onnxruntime
session = onnxruntime.InferenceSession("model.onnx")
meta = session.get_modelmeta().custom_metadata_map
labels, preprocessing = json.loads(meta["label_names"]), json.loads(meta["preprocessing"])
logits = session.run(None, {"input": images})[0]  # images: N x C x H x W float32, resized and normalised per preprocessing
```

or `zoo predict path/to/this/folder IMAGE... --backend onnxruntime`.
""",
    "model.pt2": """`model.pt2` (a `torch.export` program; metadata in its extra file zoo.json):

```python
import torch
extra = {"zoo.json": ""}
model = torch.export.load("model.pt2", extra_files=extra).module()  # json.loads(extra["zoo.json"]): labels, preprocessing
```
""",
    "model.torchscript": """`model.torchscript` (TorchScript, deprecated by PyTorch; metadata in its extra file zoo.json):

```python
import torch
extra = {"zoo.json": ""}
model = torch.jit.load("model.torchscript", _extra_files=extra)
```
""",
}


def model_card(
    recipe: Recipe,
    results: RunResults,
    plots: list[str],
    base_model: str | None,
    timm_architecture: str | None,
    hub_dataset: str | None = None,
) -> str:
    """README.md for a run folder: front matter, what the model is, how to load it, results, recipe."""
    test = results.test or {}
    dataset = recipe.data.dataset
    evaluations = [
        EvalResult(task_type="image-classification", dataset_type=hub_dataset or dataset, dataset_name=dataset,
                   dataset_split="test",
                   metric_type=metric, metric_value=round(float(test[metric]), 6))
        for metric in METRICS if metric in test
    ]  # fmt: skip
    front = ModelCardData(
        library_name="timm" if timm_architecture else "zoo",
        tags=["image-classification", "zoo", *([f"timm/{timm_architecture}"] if timm_architecture else [])],
        datasets=[hub_dataset] if hub_dataset else None,
        license=recipe.license,
        base_model=base_model,
        model_name=recipe.name if evaluations else None,
        eval_results=evaluations or None,
        pipeline_tag="image-classification",
    )
    rows = "\n".join(f"| {metric} | {test[metric]:.4f} |" for metric in METRICS if metric in test)
    rows += most_confused(test)
    training = "How these weights were chosen and trained:\n\n" + "".join(
        f"- {note}\n" for note in training_notes(recipe, results)
    )
    images = "".join(f"![{Path(plot).stem}]({plot})\n" for plot in plots)
    started = f", starting from `{base_model}`" if base_model else ""
    timm_use = (
        """
With timm alone (this folder is a timm model folder):

```python
import timm
model = timm.create_model("hf-hub:ORG/NAME", pretrained=True)   # or "local-dir:path/to/this/folder"
```
"""
        if timm_architecture
        else ""
    )
    return f"""---
{front.to_yaml()}
---

# {recipe.name}

{recipe.description or f"A {recipe.model.backbone} image classifier."} Trained with zoo on `{dataset}`
with the backbone `{recipe.model.backbone}`{started}; the resolved recipe is below.

## Results ({results.state} run)

| metric (test split, macro averages) | value |
|---|---|
{rows}

{training}
{images}
## Use

```python
import zoo
model = zoo.load("path/to/this/folder")   # `zoo pull ORG/NAME` prints the folder; labels: model.label_names
```
{timm_use}
{EXPORTS_BEGIN}
{EXPORTS_END}

## Recipe

```toml
{recipe.to_toml()}```
"""


def most_confused(test: dict, count: int = CONFUSIONS) -> str:
    """The most frequent confusions of a single-label test split (true -> predicted, how many), as a
    section of the card; empty without errors or without a confusion matrix (multi-label)."""
    matrix, labels = test.get("confusion_matrix"), [row["label"] for row in test.get("per_class", [])]
    if not matrix:
        return ""
    pairs = sorted(((n, t, p) for t, row in enumerate(matrix) for p, n in enumerate(row) if t != p and n),
                   key=lambda pair: (-pair[0], pair[1], pair[2]))[:count]  # fmt: skip
    if not pairs:
        return ""
    lines = "".join(f"| {labels[t]} | {labels[p]} | {n} |\n" for n, t, p in pairs)
    return f"\n\nMost frequent confusions (`zoo eval` lists every error in errors.csv):\n\n| true | predicted | images |\n|---|---|---|\n{lines}"


def with_exports(card: str, files: list[str]) -> str:
    """``card`` with its section on exported files listing how to run each of ``files`` (model.onnx, ...)."""
    section = "".join(f"\n{HOW_TO_RUN[name]}" for name in files if name in HOW_TO_RUN)
    body = (
        f"{EXPORTS_BEGIN}\n## Exported files\n{section}{EXPORTS_END}" if section else f"{EXPORTS_BEGIN}\n{EXPORTS_END}"
    )
    marked = re.compile(re.escape(EXPORTS_BEGIN) + ".*?" + re.escape(EXPORTS_END), re.DOTALL)
    if marked.search(card):
        return marked.sub(lambda _: body, card, count=1)
    return f"{card.rstrip()}\n\n{body}\n"  # a card from before the markers
