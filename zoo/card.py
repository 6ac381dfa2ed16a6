"""The model card: the run folder's README.md, as the Hugging Face Hub reads it.

The front matter is written by ``huggingface_hub.ModelCardData`` (library, tags, datasets,
base model, license, and the test results as ``model-index``), so that the Hub and
``huggingface_hub.ModelCard`` parse what zoo writes.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from .artifacts import RunResults
from .recipe import Recipe
from .runs import training_notes

METRICS = ("accuracy", "precision", "recall", "f1")


def model_card(
    recipe: Recipe, results: RunResults, plots: list[str], base_model: str | None, timm_architecture: str | None
) -> str:
    """README.md for a run folder: front matter, what the model is, how to load it, results, recipe."""
    test = results.test or {}
    dataset = recipe.data.dataset
    evaluations = [
        EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                   metric_type=metric, metric_value=round(float(test[metric]), 6))
        for metric in METRICS if metric in test
    ]  # fmt: skip
    front = ModelCardData(
        library_name="timm" if timm_architecture else "zoo",
        tags=["image-classification", "zoo", *([f"timm/{timm_architecture}"] if timm_architecture else [])],
        datasets=[dataset],
        license=recipe.license,
        base_model=base_model,
        model_name=recipe.name if evaluations else None,
        eval_results=evaluations or None,
        pipeline_tag="image-classification",
    )
    rows = "\n".join(f"| {metric} | {test[metric]:.4f} |" for metric in METRICS if metric in test)
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
## Recipe

```toml
{recipe.to_toml()}```
"""
