"""Models: the built-in model plugins (``mnist_cnn``, the ``timm/*`` namespace), backbone + head built
from a recipe, pretrained weights loaded, the freezing policy, a run's model loaded back.
"""
