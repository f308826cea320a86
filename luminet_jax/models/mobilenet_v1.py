"""STUB: to be implemented."""

MobileNetV1 = None  # STUB
