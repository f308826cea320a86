"""luminet_jax: LumiNet and logit-based knowledge distillation in JAX/Flax."""

__version__ = "0.1.0"
