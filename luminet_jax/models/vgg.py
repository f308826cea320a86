"""STUB: to be implemented."""

VGG8 = None  # STUB
VGG11 = None  # STUB
VGG13 = None  # STUB
VGG16 = None  # STUB
VGG19 = None  # STUB
