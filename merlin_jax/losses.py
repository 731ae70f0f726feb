"""Pure loss functions. Every function takes arrays and returns a scalar array."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          label_smoothing: float = 0.0,
                          weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy of integer `labels` [N] under `logits` [N, K].

  `weights` [N] (optional) makes it a weighted mean (padding masks).
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  per_example = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
  if weights is None:
    return jnp.mean(per_example)
  weights = weights.astype(per_example.dtype)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def accuracy(logits: jax.Array, labels: jax.Array,
             weights: jax.Array | None = None) -> jax.Array:
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  if weights is None:
    return jnp.mean(correct)
  weights = weights.astype(jnp.float32)
  return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def l2_norm_sq(tree) -> jax.Array:
  """Sum of squares of all leaves: ||w||^2."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros(())
  return sum(jnp.sum(jnp.square(x)) for x in leaves)


def l2_distance_sq(tree, anchor) -> jax.Array:
  """||w - w0||^2 over matching pytrees (the L2-SP penalty, Li et al. 2018)."""
  return l2_norm_sq(jax.tree.map(lambda a, b: a - b, tree, anchor))


def weight_decay(tree, coefficient: float) -> jax.Array:
  """coefficient/2 * ||w||^2."""
  return 0.5 * coefficient * l2_norm_sq(tree)
