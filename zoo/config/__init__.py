"""Recipes: the TOML schema, ``extends`` and overrides, and ``model.pretrained`` parsed into a typed weight source.

The lowest layer above the plugin registry: nothing here touches torch.
"""
