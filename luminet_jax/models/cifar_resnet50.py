"""STUB: to be implemented."""

ResNet50Cifar = None  # STUB
