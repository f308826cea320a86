"""STUB: to be implemented."""

DeiTTiny = None  # STUB
DeiTSmall = None  # STUB
ViTCompact = None  # STUB
