"""STUB: to be implemented."""

ShuffleNetV1 = None  # STUB
