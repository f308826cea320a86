"""STUB: to be implemented."""

Ensemble = None  # STUB
