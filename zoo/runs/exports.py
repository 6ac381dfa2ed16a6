"""The exported files of a run folder (model.onnx, model.pt2, model.ts): their names, the weights each
was made from, and keeping the folder's card in step with them.

An export records the sha256 of the weights it was made from (zoo/inference/export.py writes it);
push, pull and predict serve an export only beside those weights. Reading that record needs no
export extra and runs or unpickles nothing: an ONNX file's metadata props are read from the
protobuf wire format, an archive's zoo.json from the zip.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import _files
from .. import _locking as locking
from ..errors import ZooError
from .card import with_exports
from .folder import RunFolder

FILES: dict[str, str] = dict(zip(("onnx", "exported-program", "torchscript"), RunFolder.EXPORTS, strict=True))
FORMATS = {name: format for format, name in FILES.items()}
METADATA = "zoo.json"  # the extra file of a .pt2 or TorchScript archive holding the metadata


def card_lists_exports(run: RunFolder) -> None:
    """Rewrite the card's section on exported files to list those the folder holds now."""
    with locking.locked(run.file(RunFolder.MODEL_CARD)):  # two exports at once: the last sees both files
        card = _files.read_file(run.file(RunFolder.MODEL_CARD))
        if card is not None:  # the card says how to run what the folder holds
            present = [name for name in RunFolder.EXPORTS if run.file(name).is_file()]
            run.write_model_card(with_exports(card.decode(), present))


def drop_exports(run: RunFolder) -> list[str]:
    """Remove the run's exported files, made from weights that are about to change; the names removed.

    Only files (or links) are removed: anything else at an export's name was not made by `zoo export`.
    """
    removed = []
    for name in RunFolder.EXPORTS:
        path = run.file(name)
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(name)
    if removed:
        card_lists_exports(run)
    return removed


def not_json(name: str) -> Any:
    """json.loads' parse_constant: NaN and Infinity, which Python writes and JSON lacks, are refused."""
    raise ValueError(f"{name} is not JSON")


def check_made_from(path: Path, data: bytes, weights_sha256: str, redo: str = "") -> None:
    """An export is served only beside the weights it was made from: one whose recorded weights sha256
    differs (the run trained on after `zoo export`), or that records none, is refused in one line
    ending with ``redo`` (default: how to export it again)."""
    recorded = recorded_weights_sha256(path, data)
    redo = redo or f"export it again (`zoo export {path.parent} --format {FORMATS[path.name]}`) or delete it"
    if recorded is None:
        raise ZooError(f"{path} records no weights sha256, so it may not be the model beside it: {redo}")
    if recorded != weights_sha256:
        raise ZooError(
            f"{path} is stale: it was exported from weights with sha256 {recorded[:12]}..., not the "
            f"{RunFolder.WEIGHTS} beside it ({weights_sha256[:12]}...): {redo}"
        )


def recorded_weights_sha256(path: Path, data: bytes) -> str | None:
    """The weights sha256 that `zoo export` wrote into the export ``data`` (of the file named like ``path``),
    read without running or unpickling anything and without the export extra: push and pull check it too."""
    try:
        if path.name == FILES["onnx"]:
            metadata = {
                key: json.loads(value, parse_constant=not_json) for key, value in _onnx_metadata_props(data).items()
            }
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                inside = [name for name in archive.namelist() if name.endswith(f"/extra/{METADATA}")]
                metadata = json.loads(archive.read(inside[0]), parse_constant=not_json) if inside else {}
    except (ValueError, zipfile.BadZipFile, RecursionError, UnicodeDecodeError) as exc:
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        raise ZooError(f"{path} is not an export zoo made: {reason}") from None
    recorded = metadata.get("weights_sha256") if isinstance(metadata, dict) else None
    return recorded if isinstance(recorded, str) else None


def _onnx_metadata_props(data: bytes) -> dict[str, str]:
    """An ONNX file's metadata props (ModelProto field 14: key 1, value 2), from the protobuf wire format."""
    props = {}
    for number, entry in _protobuf_fields(data):
        if number == 14:
            fields = dict(_protobuf_fields(entry))
            props[_text(fields.get(1, b""))] = _text(fields.get(2, b""))
    return props


def _text(value: Any) -> str:
    if not isinstance(value, bytes | memoryview):
        raise ValueError("not an ONNX model: a metadata prop is not text")
    return bytes(value).decode()


def _protobuf_fields(data: Any) -> Iterator[tuple[int, int | memoryview]]:
    """The (field number, value) pairs of one protobuf message, each an int or a view of its bytes (no copy:
    a graph's weights cost nothing here); ValueError if ``data`` is not a message."""
    if not isinstance(data, bytes | memoryview):
        raise ValueError("not an ONNX model: a message is a number")
    view, position = memoryview(data), 0

    def varint() -> int:
        nonlocal position
        value = 0
        for shift in range(0, 64, 7):
            if position >= len(view):
                break
            byte = view[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise ValueError("not an ONNX model: a number runs past its end")

    while position < len(view):
        key = varint()
        kind = key & 7
        if kind == 0:
            yield key >> 3, varint()
            continue
        size = {1: 8, 5: 4}.get(kind) or (varint() if kind == 2 else None)  # 3 and 4: groups, not in ONNX
        if size is None or position + size > len(view):
            raise ValueError("not an ONNX model: a field runs past its end")
        yield key >> 3, view[position : position + size]
        position += size
