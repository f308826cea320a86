"""Moved to `luminet_jax/config_lib.py`; kept so `from configs import common` still works."""

from luminet_jax.config_lib import *  # noqa: F403
