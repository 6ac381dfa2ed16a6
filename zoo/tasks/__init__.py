"""What a model is trained to do: the losses and metrics of single-label and of multi-label classification."""
