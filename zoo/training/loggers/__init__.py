"""Metric loggers: where a run's metrics go besides the terminal (metrics.jsonl, TensorBoard, trackers).

``base`` holds the protocol every logger plugin follows; ``fan_out`` the composite the training
loop talks to. Built-in loggers are entry points in ``zoo.loggers``, as a third party's are.
"""
