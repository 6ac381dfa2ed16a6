"""Where a command that reads a run may write a file of its own (`zoo export --output`, `zoo eval --errors`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ZooError
from ..runs.exports import FILES, FORMATS
from ..runs.folder import RunFolder


def check_output(run: RunFolder, output: Path, format: str | None, option: str = "--output") -> None:
    """``option`` may name a file outside run folders, or a new file in a run folder's top level (RUN's
    own for an export: one elsewhere would pass for that run's), never a run's own files (nor, with no
    ``format``, as for `zoo eval --errors`, any of its exports).

    A symbolic link is refused rather than replaced, and a folder reached through links counts as
    the folder it is: RUN/model.safetensors spelt another way is still RUN's weights.
    """
    if output.is_symlink():
        raise ZooError(f"{option} {output} is a symbolic link, which zoo does not follow: name a file")
    if output.is_dir():
        raise ZooError(f"{option} {output} is a folder: name the file to write")
    if output.exists() and not output.is_file():  # replacing a device or FIFO with a file is no output
        raise ZooError(f"{option} {output} is not a regular file (a FIFO, socket or device): name a file to write")
    folder = output.parent.resolve()
    owner = RunFolder.holding(folder)
    if owner is None:
        return
    if owner.path != run.path.resolve() and format is not None:  # an export there would pass for that run's
        raise ZooError(f"{option} {output} is inside another run folder, {owner}: name a file outside it")
    if folder != owner.path:
        raise ZooError(
            f"{option} {output} is inside {folder.relative_to(owner.path)}/ of {owner}, which only the run writes: "
            "name a file outside it"
        )
    instead = f"leave out {option} (it writes {FILES[format]}) or name another file" if format else "name another file"
    if output.name in RunFolder.OWN:
        raise ZooError(f"{option} {output} would replace {owner}'s {output.name}, which only the run writes: {instead}")
    if output.name in RunFolder.EXPORTS and format is None:
        raise ZooError(f"{option} {output} would replace {owner}'s {output.name}, which zoo export wrote: {instead}")
    if output.name in RunFolder.EXPORTS and output.name != FILES[format]:
        raise ZooError(
            f"{option} {output} is where --format {FORMATS[output.name]} goes, not --format {format}: {instead}"
        )
