"""STUB: to be implemented."""

WRN16x1 = None  # STUB
WRN16x2 = None  # STUB
WRN40x1 = None  # STUB
WRN40x2 = None  # STUB
