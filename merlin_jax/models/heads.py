"""Linear heads as plain pytrees {'w': [D, K], 'b': [K]} and pure functions.

The target head is re-initialised and fitted inside every MeRLin outer step, so it is
kept out of Flax modules: a dict of two arrays is what the inner solver carries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_head(head, features: jax.Array) -> jax.Array:
  """logits [N, K] = features [N, D] @ w [D, K] + b [K]."""
  return features @ head["w"] + head["b"]


def init_head(key: jax.Array | None, feature_dim: int, num_classes: int,
              kind: str = "random", dtype=jnp.float32):
  """'zeros' or 'random' (LeCun-normal weights, zero bias; keyed)."""
  if kind == "zeros":
    return {"w": jnp.zeros((feature_dim, num_classes), dtype),
            "b": jnp.zeros((num_classes,), dtype)}
  if kind == "random":
    w = jax.random.normal(key, (feature_dim, num_classes), dtype) / jnp.sqrt(feature_dim)
    return {"w": w, "b": jnp.zeros((num_classes,), dtype)}
  raise ValueError(f"unknown head init {kind!r}; use 'zeros' or 'random'")
