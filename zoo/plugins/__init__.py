"""The plugin registry: entry-point discovery (``zoo.models``, ``zoo.datasets``, ``zoo.losses``,
``zoo.loggers``), in-process registration, and the contracts a plugin keeps.
"""
