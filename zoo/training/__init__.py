"""The recipe runner: setup, the training loop, checkpoints, the best epoch, optimisers and schedules, and
the handover to torchrun for ``zoo run --nproc``.
"""
