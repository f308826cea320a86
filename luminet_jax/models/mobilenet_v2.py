"""STUB: to be implemented."""

MobileNetV2 = None  # STUB
