"""zoo export and predict --backend onnxruntime: each format for each kind of model (zoo's CNN with
zoo's head, the example plugin's model, a timm BatchNorm model), verified against PyTorch."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, write_finished_run, zoo_command
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.errors import ZooError
from zoo.inference.export import compare, export_model
from zoo.inference.predict import predict_files
from zoo.runs.card import with_exports
from zoo.runs.exports import FILES, METADATA, _onnx_metadata_props, recorded_weights_sha256
from zoo.runs.folder import RunFolder
from zoo.training.runner import run

SHAPES = Path(__file__).resolve().parents[1] / "plugins" / "zoo-shapes" / "shapes.toml"
FORMATS = ["onnx", "exported-program", "torchscript"]


def zoo_in_process(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="session")
def cnn_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist_cnn with zoo's head on three digits."""
    folder = tmp_path_factory.mktemp("export") / "cnn"
    overrides = ["data.classes=[0,1,2]", "data.per_class=100", "train.epochs=1", f"output.dir={folder}"]
    return run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False).folder


@pytest.fixture(scope="session")
def plugin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin's tiny_mlp on its synthetic shapes."""
    folder = tmp_path_factory.mktemp("export") / "shapes"
    overrides = ["data.args.samples=600", "train.epochs=1", f"output.dir={folder}"]
    return run(recipes.load(SHAPES, overrides), progress=False).folder


@pytest.fixture(scope="session")
def timm_run(mnist_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm's test_resnet (BatchNorm) on a PNG folder."""
    folder = tmp_path_factory.mktemp("export") / "timm"
    overrides = [
        "model.backbone=timm/test_resnet", "model.pretrained=false", "model.freeze.freeze=[]", "data.image_size=32",
        "data.classes=[0,1,2]", "data.batch_size=16", "data.num_workers=0", "train.epochs=1", f"data.root={mnist_png}",
        f"output.dir={folder}",
    ]  # fmt: skip
    return run(recipes.load(RECIPES / "timm_finetune.toml", overrides), progress=False).folder


def exported_metadata(path: Path, format: str) -> dict:
    if format == "onnx":
        return {prop.key: json.loads(prop.value) for prop in onnx.load(str(path)).metadata_props}
    extra = {METADATA: ""}
    if format == "exported-program":
        torch.export.load(str(path), extra_files=extra)
    else:
        torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra[METADATA])


def run_exported(path: Path, format: str, images: torch.Tensor) -> torch.Tensor:
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"input": images.numpy()})[0])
    if format == "exported-program":
        return torch.export.load(str(path)).module()(images)
    return torch.jit.load(str(path))(images)


def check_export(folder: Path, format: str) -> None:
    """Export with a dynamic batch; the file holds the labels and preprocessing, runs like the model on new
    inputs of another batch size, and the card says how to run it."""
    result = zoo_in_process("export", str(folder), "--format", format, "--dynamic-batch")
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.0%" in result.output and "verified on" in result.output
    run_folder = RunFolder(folder)
    path = run_folder.file(FILES[format])
    metadata = exported_metadata(path, format)
    assert metadata["label_names"] == run_folder.label_names
    assert metadata["preprocessing"] == run_folder.preprocessing.to_config()
    model = zoo.load(folder)
    images = torch.randn(5, *run_folder.preprocessing.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(run_exported(path, format, images).float(), model(images), atol=1e-3, rtol=0)
    assert f"`{path.name}`" in (folder / "README.md").read_text()
    assert not list(folder.glob(".*.tmp*"))  # nothing staged is left behind
    data = path.read_bytes()  # what the exporters record of this machine (stack traces) is not shipped
    assert str(Path(zoo.__file__).parent).encode() not in data and str(folder).encode() not in data


@pytest.mark.parametrize("format", FORMATS)
def test_zoo_cnn_exports_in_every_format(cnn_run: Path, format: str) -> None:
    check_export(cnn_run, format)


@pytest.mark.parametrize("format", FORMATS)
def test_a_plugin_model_exports_in_every_format(plugin_run: Path, format: str) -> None:
    check_export(plugin_run, format)


@pytest.mark.slow
@pytest.mark.parametrize("format", FORMATS)
def test_a_timm_batchnorm_model_exports_in_every_format(timm_run: Path, format: str) -> None:
    check_export(timm_run, format)


def test_a_static_export_takes_one_image_and_another_output_path(cnn_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "deploy" / "digits.onnx"
    result = zoo_in_process("export", str(cnn_run), "--format", "onnx", "--opset", "18", "--output", str(target))
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(target))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert any(entry.domain in ("", "ai.onnx") and entry.version == 18 for entry in graph.opset_import)


def test_an_opset_the_dynamo_exporter_cannot_convert_to_is_made_by_the_torchscript_one(
    cnn_run: Path, tmp_path: Path
) -> None:
    """torch's dynamo exporter makes opset 18 and keeps it where it cannot convert down (13 here), saying
    so in its log (shown with --verbose only): the TorchScript-based exporter then makes the opset asked
    for, verified like any export."""
    target = tmp_path / "digits13.onnx"
    result = zoo_in_process("export", str(cnn_run), "--format", "onnx", "--opset", "13", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert "Setting ONNX exporter" not in result.stderr
    assert "TorchScript-based: the dynamo exporter made opset 18" in result.stdout
    graph = onnx.load(str(target))
    assert [entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")] == [13]
    assert json.loads({prop.key: prop.value for prop in graph.metadata_props}["label_names"]) == ["0", "1", "2"]
    verbose = zoo_in_process(
        "--verbose", "export", str(cnn_run), "--format", "onnx", "--opset", "13", "--output", str(target)
    )
    assert verbose.exit_code == 0 and "Setting ONNX exporter to use operator set version 18" in verbose.stderr


def test_an_opset_neither_exporter_can_make_is_one_line(cnn_run: Path, tmp_path: Path) -> None:
    """Opset 30: the dynamo exporter keeps its 18 and the TorchScript-based one refuses: refused in one
    line saying what each did, nothing written."""
    target = tmp_path / "digits.onnx"
    refused = zoo_in_process("export", str(cnn_run), "--format", "onnx", "--opset", "30", "--output", str(target))
    line = assert_user_error(refused, "--opset 30", "made opset 18", "TorchScript-based one refused", "--opset 18")
    assert "could only" not in line
    assert not target.exists() and list(tmp_path.iterdir()) == []


class Diverging(nn.Module):
    """A model whose exported graph computes something else than its eager forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            logits = logits + torch.tensor([0.0, 0.0, 5.0])
        return logits


@pytest.mark.parametrize("format", FORMATS)
def test_an_export_that_diverges_is_refused_and_nothing_is_written(tmp_path: Path, format: str) -> None:
    target = tmp_path / FILES[format]
    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ZooError, match="does not compute what the model does") as refused:
        export_model(Diverging().eval(), inputs, format, target, {"label_names": list("abc")}, dynamic_batch=True)
    assert "top-1 label agrees on" in str(refused.value) and "nothing was written" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(-20, 20), min_size=12, max_size=12),
    st.integers(0, 64).map(lambda k: k / 1024),  # sums stay exact in float32: no tie is broken by rounding
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_compare_measures_the_largest_difference_and_the_share_of_same_labels(
    logits: list, noise: float, swap: list
) -> None:
    expected = torch.tensor(logits, dtype=torch.float32).view(4, 3)
    found = expected + noise  # the same shift for every class: no label changes
    order = expected.argsort(1, descending=True)
    best_two = expected.gather(1, order[:, :2])
    swapped = torch.tensor(swap) & (best_two[:, 0] - best_two[:, 1] > 1e-3)  # these change label
    for row in torch.nonzero(swapped).flatten().tolist():
        found[row, order[row, 0]], found[row, order[row, 1]] = best_two[row, 1] - 1, best_two[row, 0]
    difference, agreement = compare(expected, found)
    assert difference == float((expected - found).abs().max()) and difference >= noise
    assert agreement == pytest.approx(1 - float(swapped.float().mean()))


def test_predict_with_onnxruntime_gives_the_pytorch_labels_and_probabilities(cnn_run: Path, tmp_path: Path) -> None:
    files = []
    for index in range(6):
        image = (torch.rand(28, 28, generator=torch.Generator().manual_seed(index)) * 255).to(torch.uint8)
        files.append(tmp_path / f"digit{index}.png")
        Image.fromarray(image.numpy()).resize((40 + index, 32)).save(files[-1])  # any size: resized as preprocessed
    for dynamic in ([], ["--dynamic-batch"]):
        assert zoo_in_process("export", str(cnn_run), "--format", "onnx", *dynamic).exit_code == 0
        predictions = {}
        for backend in ("torch", "onnxruntime"):
            result = zoo_in_process("predict", str(cnn_run), *map(str, files), "--backend", backend, "--json")
            assert result.exit_code == 0, result.output
            predictions[backend] = json.loads(result.stdout)
        for pytorch, onnx_runtime in zip(predictions["torch"], predictions["onnxruntime"], strict=True):
            assert [t["label"] for t in pytorch["top"]] == [t["label"] for t in onnx_runtime["top"]]
            for a, b in zip(pytorch["top"], onnx_runtime["top"]):
                assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_a_damaged_or_foreign_onnx_file_is_one_line(cnn_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.json", "recipe.toml", "results.json", "model.safetensors"):
        (folder / name).write_bytes((cnn_run / name).read_bytes())
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    missing = zoo_command("predict", str(folder), str(image), "--backend", "onnxruntime")
    assert_user_error(missing, "has no model.onnx", "zoo export")
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage")
    assert_user_error(zoo_in_process("predict", str(folder), str(image), "--backend", "onnxruntime"), "model.onnx")
    foreign = nn.Linear(784, 3)
    torch.onnx.export(nn.Sequential(nn.Flatten(), foreign), (torch.zeros(1, 1, 28, 28),), str(folder / "model.onnx"))
    assert_user_error(
        zoo_in_process("predict", str(folder), str(image), "--backend", "onnxruntime"), "holds no zoo metadata"
    )


def test_unfinished_runs_wrong_options_and_a_missing_extra_are_one_line(
    cnn_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_user_error(
        zoo_in_process("export", str(cnn_run), "--format", "torchscript", "--opset", "17"), "--opset is for"
    )
    assert_user_error(zoo_in_process("export", str(tmp_path), "--format", "onnx"), "not a zoo run folder")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "recipe.toml", "model.safetensors"):
        (unfinished / name).write_bytes((cnn_run / name).read_bytes())
    (unfinished / "results.json").write_text('{"state": "running"}')
    assert_user_error(zoo_in_process("export", str(unfinished), "--format", "onnx"), "not a finished run")
    assert_user_error(
        zoo_in_process("export", str(cnn_run), "--format", "onnx", "--data.bogus=1"), "data.bogus", "data"
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    missing = zoo_in_process("export", str(cnn_run), "--format", "onnx", "--data.root=/nonexistent")
    assert_user_error(missing, "onnxruntime", "zoo[export]")  # before the data is looked for
    assert_user_error(zoo_in_process("predict", str(cnn_run), str(tmp_path), "--backend", "onnxruntime"), "zoo[export]")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=8,
)
VALID = {"input_size": [1, 2, 2], "mean": [0.5], "std": [0.5]}
PREPROCESSING = JSON | st.fixed_dictionaries(
    {key: st.just(value) | JSON for key, value in VALID.items()}, optional={"crop_pct": JSON, "interpolation": JSON}
)
LABELS = JSON | st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def small_onnx() -> bytes:
    """An ONNX classifier of 1x2x2 images into three classes, without metadata."""
    buffer = io.BytesIO()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    torch.onnx.export(model, (torch.zeros(1, 1, 2, 2),), buffer, dynamo=False, input_names=["input"])
    return buffer.getvalue()


@settings(max_examples=60, deadline=None)
@given(labels=LABELS, preprocessing=PREPROCESSING, garbled=st.sampled_from(["", "label_names", "preprocessing"]))
@example(labels=["a", "b", "c"], preprocessing=VALID, garbled="")
def test_hostile_onnx_metadata_is_one_line_or_predicts_with_the_labels_it_names(
    small_onnx: bytes, tmp_path_factory: pytest.TempPathFactory, labels, preprocessing, garbled: str
) -> None:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "results.json").write_text('{"state": "finished"}')
    graph = onnx.load_from_string(small_onnx)
    for key, value in (("label_names", labels), ("preprocessing", preprocessing)):
        text = json.dumps(value)
        graph.metadata_props.add(key=key, value=text[: len(text) // 2] if key == garbled else text)
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    Image.new("L", (5, 3), 200).save(folder / "image.png")
    try:
        predictions, errors = predict_files(folder, [folder / "image.png"], 2, "onnxruntime")
    except ZooError as exc:
        assert "\n" not in str(exc) and "model.onnx" in str(exc)
        return
    assert errors == [] and len(labels) == 3  # as many labels as the graph has outputs
    assert {entry["label"] for entry in predictions[0]["top"]} <= set(labels)


def test_when_the_dynamo_exporter_fails_the_torchscript_based_one_is_used_and_said(
    cnn_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = torch.onnx.export

    def no_dynamo(*args, dynamo: bool = True, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported operator, say")
        return export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    target = tmp_path / "legacy.onnx"
    result = zoo_in_process("export", str(cnn_run), "--format", "onnx", "--dynamic-batch", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert "TorchScript-based: the dynamo exporter failed: unsupported operator, say" in result.output
    graph = onnx.load(str(target))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # any batch
    assert json.loads({p.key: p.value for p in graph.metadata_props}["label_names"]) == ["0", "1", "2"]
    assert str(Path(zoo.__file__).parent).encode() not in target.read_bytes()


def test_two_exports_at_once_both_land_in_the_card(plugin_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(plugin_run, run)
    for name in RunFolder.EXPORTS:
        (run / name).unlink(missing_ok=True)
    (run / "README.md").write_text(with_exports((run / "README.md").read_text(), []))
    exports = [
        subprocess.Popen([sys.executable, "-m", "zoo", "export", str(run), "--format", format], stderr=subprocess.PIPE)
        for format in ("onnx", "exported-program")
    ]
    assert [process.wait(timeout=300) for process in exports] == [0, 0]
    card = (run / "README.md").read_text()
    assert "`model.onnx`" in card and "`model.pt2`" in card and "`model.torchscript`" not in card


def copy_of(run_folder: Path, tmp_path: Path) -> Path:
    """A run folder's copy without the exports earlier tests left in it, its card listing none."""
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder, ignore=shutil.ignore_patterns(*RunFolder.EXPORTS))
    (folder / "README.md").write_text(with_exports((folder / "README.md").read_text(), []))
    return folder


def changed_weights(folder: Path) -> None:
    """The run's weights as if it had trained on: one tensor moved."""
    tensors = load_file(folder / "model.safetensors")
    name = next(name for name, tensor in tensors.items() if tensor.is_floating_point())
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_an_export_of_other_weights_is_refused_by_predict(cnn_run: Path, tmp_path: Path) -> None:
    folder = copy_of(cnn_run, tmp_path)
    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 100).save(image)
    assert zoo_in_process("export", str(folder), "--format", "onnx").exit_code == 0
    assert zoo_in_process("predict", str(folder), str(image), "--backend", "onnxruntime").exit_code == 0
    changed_weights(folder)
    stale = zoo_in_process("predict", str(folder), str(image), "--backend", "onnxruntime")
    assert_user_error(stale, "model.onnx is stale", "model.safetensors", "zoo export")
    graph = onnx.load(str(folder / "model.onnx"))
    kept = [prop for prop in graph.metadata_props if prop.key != "weights_sha256"]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, str(folder / "model.onnx"))
    unknown = zoo_in_process("predict", str(folder), str(image), "--backend", "onnxruntime")
    assert_user_error(unknown, "model.onnx records no weights sha256")


def test_a_resumed_run_removes_its_exports_and_its_card_stops_listing_them(
    cnn_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_of(cnn_run, tmp_path)
    for format in ("onnx", "exported-program"):
        assert zoo_in_process("export", str(folder), "--format", format).exit_code == 0
    assert "`model.onnx`" in (folder / "README.md").read_text()
    cards = []
    monkeypatch.setattr(RunFolder, "write_model_card", lambda self, text: cards.append(text))  # the card mid-run
    overrides = ["data.classes=[0,1,2]", "data.per_class=100", "train.epochs=2", f"output.dir={folder}"]
    run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False, resume=folder)
    assert not [name for name in RunFolder.EXPORTS if (folder / name).exists()]
    assert len(cards) == 2  # as the exports went, then the finished run's
    assert "`model.onnx`" not in cards[0] and "`model.pt2`" not in cards[0] and "## Recipe" in cards[0]
    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 100).save(image)
    missing = zoo_in_process("predict", str(folder), str(image), "--backend", "onnxruntime")
    assert_user_error(missing, "has no model.onnx")


@pytest.mark.parametrize(
    ("output", "fragments"),
    [
        ("RUN/model.safetensors", ["would replace", "model.safetensors", "only the run writes"]),
        ("RUN/config.json", ["would replace", "config.json"]),
        ("RUN/recipe.toml", ["would replace", "recipe.toml"]),
        ("RUN/results.json", ["would replace", "results.json"]),
        ("RUN/checkpoints/model.onnx", ["inside checkpoints/", "only the run writes"]),
        ("RUN/model.pt2", ["where --format exported-program goes"]),
        ("LINK_TO_RUN/model.safetensors", ["would replace", "model.safetensors"]),
        ("OTHER/model.onnx", ["inside another run folder"]),
        ("OTHER/model.safetensors", ["inside another run folder"]),
        ("LINK_TO_WEIGHTS", ["is a symbolic link"]),
        ("RUN", ["is a folder"]),
        ("FIFO", ["is not a regular file"]),
    ],
)
def test_an_output_never_replaces_a_runs_own_files(tmp_path: Path, output: str, fragments: list[str]) -> None:
    """Refused before anything is read or written: every file of both runs is as it was."""
    runs = {name: write_finished_run(tmp_path / name).path for name in ("RUN", "OTHER")}
    for folder in runs.values():
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "checkpoints").mkdir()
    (tmp_path / "LINK_TO_RUN").symlink_to(runs["RUN"])
    (tmp_path / "LINK_TO_WEIGHTS").symlink_to(runs["RUN"] / "model.safetensors")
    os.mkfifo(tmp_path / "FIFO")  # a device node is refused alike: only a regular file is ever replaced
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    refused = zoo_in_process("export", str(runs["RUN"]), "--format", "onnx", "--output", str(tmp_path / output))
    assert_user_error(refused, "--output", *fragments)
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    assert after == before


def zoo_onnx(folder: Path, nodes: list, initializers: list, outputs: list, labels: list[str]) -> Path:
    """A model.onnx with zoo's metadata for 1x2x2 images (its input's shape left open), alone in a folder."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "channels", "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, outputs)], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (("label_names", labels), ("preprocessing", VALID)):
        model.metadata_props.add(key=key, value=json.dumps(value))
    folder.mkdir()
    (folder / "results.json").write_text('{"state": "finished"}')
    onnx.save(model, str(folder / "model.onnx"))
    Image.new("L", (2, 2), 100).save(folder / "image.png")
    return folder


def test_an_onnx_model_that_fails_at_run_time_or_gives_other_widths_is_one_line(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    reshape = [helper.make_node("Reshape", ["input", "shape"], ["logits"])]
    failing = zoo_onnx(
        tmp_path / "fails", reshape, [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])], ["batch", 3],
        ["a", "b", "c"],
    )  # fmt: skip
    predicted = zoo_command("predict", str(failing), str(failing / "image.png"), "--backend", "onnxruntime")
    assert_user_error(predicted, "model.onnx fails in onnxruntime", "cannot be reshaped")
    flatten = [helper.make_node("Flatten", ["input"], ["logits"], axis=1)]  # a width known only at run time
    for labels in (["a", "b", "c"], ["a", "b", "c", "d", "e"]):  # four logits, more or fewer labels
        folder = zoo_onnx(tmp_path / f"width{len(labels)}", flatten, [], ["batch", "width"], labels)
        predicted = zoo_in_process("predict", str(folder), str(folder / "image.png"), "--backend", "onnxruntime")
        assert_user_error(predicted, "outputs of shape [1, 4]", f"names {len(labels)} labels")
    fits = zoo_onnx(tmp_path / "fits", flatten, [], ["batch", "width"], ["a", "b", "c", "d"])
    predictions, errors = predict_files(fits, [fits / "image.png"], 2, "onnxruntime")
    assert errors == [] and len(predictions[0]["top"]) == 2


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_at_model_onnx_is_said_to_be_one(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text('{"state": "finished"}')
    Image.new("L", (2, 2)).save(tmp_path / "image.png")
    if kind == "folder":
        (folder / "model.onnx").mkdir()
    else:
        os.mkfifo(folder / "model.onnx")
    predicted = zoo_in_process("predict", str(folder), str(tmp_path / "image.png"), "--backend", "onnxruntime")
    line = assert_user_error(predicted, "model.onnx is", "a folder" if kind == "folder" else "a FIFO")
    assert "has no model.onnx" not in line


@settings(max_examples=40, deadline=None)
@given(
    props=st.dictionaries(st.text(max_size=8), st.text(max_size=80), max_size=5),
    cut=st.integers(0, 400),
)
def test_onnx_metadata_is_read_without_onnx_as_onnx_reads_it(small_onnx: bytes, props: dict, cut: int) -> None:
    """Push and pull read an export's weights hash from the protobuf itself; any prefix of the file is
    either read or a one-line refusal."""
    graph = onnx.load_from_string(small_onnx)
    for key, value in props.items():
        graph.metadata_props.add(key=key, value=value)
    data = graph.SerializeToString()
    assert _onnx_metadata_props(data) == {prop.key: prop.value for prop in graph.metadata_props}
    try:
        recorded_weights_sha256(Path("model.onnx"), data[: len(data) - cut])
    except ZooError as exc:
        assert "\n" not in str(exc) and "model.onnx is not an export zoo made" in str(exc)


@pytest.mark.parametrize("source", ["hf-hub:me/old", "registry:mnist-digits", "recipe:mnist.toml"])
def test_export_of_a_source_that_is_no_run_folder_is_one_line(source: str) -> None:
    """Export writes into RUN: a pulled copy's pinned files must stay as they were pulled."""
    assert_user_error(zoo_command("export", source, "--format", "onnx"), "zoo export takes a run folder", source)
