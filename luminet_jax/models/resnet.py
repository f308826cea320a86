"""STUB: to be implemented."""

ResNet18 = None  # STUB
ResNet34 = None  # STUB
ResNet50 = None  # STUB
