"""config.model.dtype -> the activations' dtype (a module of its own: the package and the
backbones it registers, e.g. bert.py, both read it, and neither imports the other's)."""

import jax.numpy as jnp

from merlin_jax import keys

# The choices of model.dtype (merlin_jax/keys.py; a test keeps the two in step).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg):
  """config.model.dtype -> the activations' dtype (parameters stay float32)."""
  name = cfg.get("dtype", keys.default("model.dtype"))
  keys.check("model.dtype", name)   # an export's config is read here unchecked
  return DTYPES[name]
