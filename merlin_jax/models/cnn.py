"""Small CNN backbone for 28-32 px images (the digits / Fashion-MNIST pairs).

Default widths are those of ../shared/notes/BENCH.md: Conv(32,3x3)+ReLU+pool2 ->
Conv(64,3x3)+ReLU+pool2 -> flatten -> Dense(256)+ReLU.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` (VALID), as strided slices and selects.

  Same values and the same gradient, ties included (the first maximum in window order
  receives it, as XLA's select-and-scatter does), but fast on CPU: the gradient of
  `reduce_window` max is a select-and-scatter, which XLA:CPU runs as a slow scalar loop
  (~100 ms per step at the BENCH.md size, more than the convolutions themselves).
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]   # VALID: an odd last row / column is dropped
  y = x.reshape(n, h // 2, 2, w // 2, 2, c)
  a, b = y[:, :, 0, :, 0], y[:, :, 0, :, 1]
  c_, d = y[:, :, 1, :, 0], y[:, :, 1, :, 1]
  ab = jnp.where(a >= b, a, b)      # on ties keep the earlier element, like select(ge)
  cd = jnp.where(c_ >= d, c_, d)
  return jnp.where(ab >= cd, ab, cd)


class SmallCNN(nn.Module):
  conv_widths: Sequence[int] = (32, 64)
  feature_dim: int = 256
  use_batch_norm: bool = False
  dtype: Any = jnp.float32   # activations / matmuls (parameters stay float32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # x: [N, H, W, C] float32
    for width in self.conv_widths:
      x = nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype)(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
      x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.feature_dim, dtype=self.dtype)(x))
    return x.astype(jnp.float32)  # [N, feature_dim]
