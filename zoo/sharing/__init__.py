"""Sharing runs: ``registry.json`` (named weights pinned to a commit and sha256) and the Hugging Face Hub
(``zoo push``, ``pull``, ``publish``).
"""
