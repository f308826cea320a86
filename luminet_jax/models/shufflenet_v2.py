"""STUB: to be implemented."""

ShuffleNetV2 = None  # STUB
