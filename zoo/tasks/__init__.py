"""What a model is trained to do: the losses and the metrics of single-label classification."""
