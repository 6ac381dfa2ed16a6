"""zoo-shapes: an example zoo plugin package (model tiny_mlp, dataset shapes, loss poly1, logger csv)."""
