"""Experiment configs: `get_config(arg)` files read by `luminet_jax.main` (see common.py)."""
