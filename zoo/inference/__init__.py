"""A finished run put to use: evaluated on a split, predicting image files, exported (ONNX, torch.export,
TorchScript). Nothing here trains.
"""
