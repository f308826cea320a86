"""STUB: to be implemented."""

ResNet8 = None  # STUB
ResNet14 = None  # STUB
ResNet20 = None  # STUB
ResNet32 = None  # STUB
ResNet44 = None  # STUB
ResNet56 = None  # STUB
ResNet110 = None  # STUB
ResNet8x4 = None  # STUB
ResNet32x4 = None  # STUB
