"""``zoo export``: a run's model as ONNX, a torch.export program or TorchScript, verified before it is kept.

Every export is run back (onnxruntime, the loaded program, the loaded script) on real evaluation
images of the run's own data and compared with the PyTorch model; a file that disagrees beyond
the tolerance is never written. The preprocessing and the label names travel inside the file
(ONNX metadata props, the archive's extra files), so a consumer needs nothing else. The file
is made in memory and written atomically once verified. zoo loads a .pt2 or TorchScript archive
only here, the bytes it has just made itself: it never loads one it did not make.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import _files
from .._output import library_logs_to_root
from .._version import __version__
from ..data.preprocessing import Preprocessing
from ..errors import ZooError
from ..runs.exports import FILES, METADATA, card_lists_exports, not_json
from ..runs.folder import RunFolder, check_temperature, check_thresholds
from .outputs import check_output

Format = Literal["onnx", "exported-program", "torchscript"]
INPUT, OUTPUT = "input", "logits"
VERIFY_IMAGES = 64  # evaluation images each export is checked on
ATOL = 1e-3  # logits; float32 kernels differ by ~1e-5, a wrong graph by far more
EXTRA = "pip install 'zoo[export]'"

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Exported:
    path: Path
    exporter: str  # what made the file, in words
    max_abs_diff: float  # between the exported model's logits and PyTorch's, over the checked images
    top1_agreement: float  # fraction of the checked images with the same top-1 label
    images: int


def needs(module: str) -> Any:
    """Import one of the export extra's modules, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ZooError(f"this needs {module}, from the export extra: {EXTRA}") from None


def export_run(
    run_folder: Path,
    format: Format,
    dynamic_batch: bool = False,
    opset: int | None = None,
    output: Path | None = None,
    data_overrides: Sequence[str] = (),
    atol: float = ATOL,
) -> Exported:
    """Export a finished run's model to ``output`` (default: the run folder, named by format), verified."""
    from .evaluate import run_setup

    check_options(format, opset)  # before the data is loaded
    run = RunFolder.existing(run_folder)
    if run.state != "finished":
        raise ZooError(f"{run_folder} is not a finished run (state: {run.state}): only finished runs are exported")
    if output is not None:
        check_output(run, output, format)
    setup = run_setup(run, data_overrides)
    inputs = evaluation_inputs(setup.batches(setup.splits.test), VERIFY_IMAGES)
    metadata = {
        "label_names": run.label_names,
        "preprocessing": run.preprocessing.to_config(),
        "weights_sha256": _files.sha256_of(run.file(RunFolder.WEIGHTS)),
        "architecture": run.config.get("architecture"),
        "zoo_version": __version__,
    }
    if run.thresholds is not None:  # a multi-label model: its labels are the sigmoid scores over these
        metadata["thresholds"] = run.thresholds
    if run.temperature != 1.0:  # a calibrated model: softmax(logits / temperature)
        metadata["temperature"] = run.temperature
    model = setup.model.to("cpu", torch.float32).eval()
    exported = export_model(
        model, inputs, format, output or run.file(FILES[format]), metadata, dynamic_batch, opset, atol
    )
    card_lists_exports(run)
    return exported


def evaluation_inputs(batches: Any, count: int) -> torch.Tensor:
    """The first ``count`` images of a split, preprocessed as evaluation sees them, on the CPU."""
    taken: list[torch.Tensor] = []
    for images, _ in batches.epoch():
        taken.append(images.to("cpu", torch.float32))
        if sum(len(t) for t in taken) >= count:
            break
    if not taken:
        raise ZooError("the run's test split is empty: there is nothing to verify an export on")
    return torch.cat(taken)[:count].contiguous()


def export_model(
    model: nn.Module,
    inputs: torch.Tensor,
    format: Format,
    path: Path,
    metadata: dict[str, Any],
    dynamic_batch: bool = False,
    opset: int | None = None,
    atol: float = ATOL,
) -> Exported:
    """Export ``model``, run the export back on ``inputs`` and write it to ``path`` only if it agrees."""
    check_options(format, opset)
    example = inputs[:2] if dynamic_batch else inputs[:1]  # torch.export specialises a batch of one
    export = {"onnx": _onnx, "exported-program": _program, "torchscript": _script}[format]
    exporter, data, load = export(model, example, metadata, dynamic_batch, opset)
    with torch.no_grad():
        expected = model(inputs).float()
        found = in_steps(load(), None if dynamic_batch else 1)(inputs).float()
    if found.shape != expected.shape:
        raise ZooError(f"the {format} export gives outputs of shape {list(found.shape)}, not {list(expected.shape)}")
    difference, agreement = compare(expected, found)
    if not difference <= atol:  # within it, only images whose best two logits tie can change label
        raise ZooError(
            f"the {format} export does not compute what the model does: logits differ by up to {difference:.3g} "
            f"(tolerance {atol:g}) and the top-1 label agrees on {agreement:.1%} of {len(inputs)} test images; "
            f"nothing was written to {path}"
        )
    _files.atomic_write(path, data)
    return Exported(path, exporter, difference, agreement, len(inputs))


def check_options(format: Format, opset: int | None) -> None:
    """What can be refused before any work: an option of another format, a missing extra."""
    if opset is not None and format != "onnx":
        raise ZooError(f"--opset is for --format onnx, not {format}")
    if format == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):  # the exporter, its translator, the verifier
            needs(module)


def compare(expected: torch.Tensor, found: torch.Tensor) -> tuple[float, float]:
    """Max absolute difference of two logit batches, and the fraction of images with the same top-1 label."""
    difference = float((expected - found).abs().max())
    return difference, float((expected.argmax(1) == found.argmax(1)).float().mean())


def in_steps(run: Runner, step: int | None) -> Runner:
    """``run`` for a batch of any size, fed ``step`` images at a time (all at once for None)."""
    if step is None:
        return run
    return lambda batch: torch.cat([run(batch[i : i + step]) for i in range(0, len(batch), step)])


# Each exporter returns what it used, the file's bytes, and how to load them back. Files are made
# in memory: nothing is written before verification, and no local path ends up inside a file
# (the stack traces the exporters record, with this machine's paths, are dropped).
Exporter = tuple[str, bytes, Callable[[], Runner]]


def _onnx(
    model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], dynamic: bool, opset: int | None
) -> Exporter:
    onnx = needs("onnx")  # with onnxscript and onnxruntime, checked by check_options
    library_logs_to_root("torch.onnx")  # "Setting ONNX exporter to use operator set version 18 ...": --verbose only
    graph, exporter = _onnx_graph(onnx, model, example, dynamic, opset)
    if opset is not None and _opset_of(graph) != opset:  # never a file in another opset than the one asked for
        raise ZooError(f"--opset {opset}: the ONNX exporters made this model in opset {_opset_of(graph)}")
    for node in [*graph.graph.node, *(n for function in graph.functions for n in function.node)]:
        del node.metadata_props[:]  # stack traces and source lines of this machine's files
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=json.dumps(value))
    data = graph.SerializeToString()
    return exporter, data, lambda: onnx_runner(onnx_session(data, "the ONNX export"), "the ONNX export")


def _onnx_graph(
    onnx: Any, model: nn.Module, example: torch.Tensor, dynamic: bool, opset: int | None
) -> tuple[Any, str]:
    """The ONNX graph of ``model`` in ``opset``, by the dynamo exporter or, where it fails or makes
    another opset (it converts its own down where it can, and keeps its own where it cannot), the
    TorchScript-based one."""
    common: dict[str, Any] = {"input_names": [INPUT], "output_names": [OUTPUT], "opset_version": opset}
    try:
        batch = {0: torch.export.Dim("batch", min=1)} if dynamic else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=(batch,) if dynamic else None, verbose=False, **common
            )
        made = _opset_of(program.model_proto)
        if opset is None or made == opset:
            return program.model_proto, "torch.onnx.export (dynamo)"
        reason = f"made opset {made}"
    except Exception as exc:  # the dynamo exporter cannot take every model; the older one then may
        made, reason = None, f"failed: {_first_line(exc)}"
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buffer, dynamo=False, dynamic_axes=axes, **common)
    except Exception as exc:
        if opset is None:  # neither exporter takes the model: an error of its own, with its traceback
            raise
        advice = f"use --opset {made}, or leave --opset out" if made else "leave --opset out"
        raise ZooError(
            f"--opset {opset}: the dynamo ONNX exporter {reason[:200]} and the TorchScript-based one refused "
            f"({_first_line(exc)[:200]}); {advice}"
        ) from None
    graph = onnx.load_from_string(buffer.getvalue())
    return graph, f"torch.onnx.export (TorchScript-based: the dynamo exporter {reason[:200]})"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _opset_of(graph: Any) -> int | None:
    """The standard ONNX opset a graph is written in."""
    return next((entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")), None)


def onnx_runner(session: Any, what: str = "the ONNX model") -> Runner:
    """An onnxruntime session as a function of a batch of any size (a fixed-batch model takes it in steps);
    ``what`` names it when onnxruntime fails running it."""
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]  # an int for a fixed batch size, a name for any

    def run(batch: torch.Tensor) -> torch.Tensor:
        try:
            return torch.from_numpy(session.run(None, {name: batch.numpy()})[0])
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):  # its own types, for a graph that cannot run
                raise
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            raise ZooError(f"{what} fails in onnxruntime on a batch of {len(batch)}: {reason}") from None

    return in_steps(run, fixed if isinstance(fixed, int) else None)


def onnx_session(model: Path | bytes, what: str) -> Any:
    """An onnxruntime session on the CPU for an ONNX file or its bytes; ``what`` names it in errors."""
    onnxruntime = needs("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: its errors reach the user as zoo's one line, not its log too
    try:
        source = str(model) if isinstance(model, Path) else model
        return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a damaged file
        raise ZooError(f"{what} is not an ONNX model onnxruntime can run: {str(exc).splitlines()[0]}") from None


def onnx_metadata(session: Any, path: Path) -> tuple[list[str], Preprocessing, list[float] | None, float]:
    """The label names, preprocessing, (multi-label) thresholds and temperature zoo wrote into an
    ONNX file, checked against the graph they travel with."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        labels, preprocessing = (
            json.loads(props[key], parse_constant=not_json) for key in ("label_names", "preprocessing")
        )
    except (KeyError, ValueError, RecursionError) as exc:
        raise ZooError(f"{path} holds no zoo metadata ({exc}): export it with `zoo export RUN --format onnx`") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise ZooError(f"{path}: its label_names metadata must be a non-empty list of strings")
    if not isinstance(preprocessing, dict):
        raise ZooError(f"{path}: its preprocessing metadata must be a table (input_size, mean, std, ...)")
    preprocessing = Preprocessing.from_config(preprocessing, f"{path}: preprocessing")
    takes, gives = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    if len(takes) != 4 or any(isinstance(n, int) and n != want for n, want in zip(takes[1:], preprocessing.input_size)):
        raise ZooError(
            f"{path}: the model takes inputs {takes}, but its preprocessing makes {list(preprocessing.input_size)}"
        )
    if len(gives) != 2 or (isinstance(gives[1], int) and gives[1] != len(labels)):
        raise ZooError(f"{path}: the model gives outputs {gives}, but its metadata names {len(labels)} labels")
    try:
        thresholds, temperature = (json.loads(props[key], parse_constant=not_json) if key in props else default
                                   for key, default in (("thresholds", None), ("temperature", 1.0)))  # fmt: skip
    except (ValueError, RecursionError):
        thresholds = temperature = "damaged"
    check_thresholds(thresholds, len(labels), f"{path} metadata")
    check_temperature(temperature, f"{path} metadata")
    return labels, preprocessing, thresholds, float(temperature)


def _program(
    model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], dynamic: bool, _: int | None
) -> Exporter:
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)  # this machine's paths
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA: json.dumps(metadata)})
    data = buffer.getvalue()
    return "torch.export", data, lambda: torch.export.load(io.BytesIO(data)).module()


def _script(
    model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], dynamic: bool, _: int | None
) -> Exporter:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export: said in the output
        warnings.simplefilter("ignore")
        script = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(script, buffer, _extra_files={METADATA: json.dumps(metadata)})
    data = buffer.getvalue()
    exporter = "torch.jit.trace (TorchScript is deprecated in PyTorch; prefer --format exported-program)"
    return exporter, data, lambda: _quietly(torch.jit.load, io.BytesIO(data))


def _quietly(function: Callable[..., Any], *args: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)
