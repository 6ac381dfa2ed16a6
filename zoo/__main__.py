"""``python -m zoo``: the same CLI, for launchers such as ``torchrun -m zoo``."""

from .cli import main

main()
