"""Small CNN backbone for 28-32 px images (the digits / Fashion-MNIST pairs).

Default widths are those of ../shared/notes/BENCH.md: Conv(32,3x3)+ReLU+pool2 ->
Conv(64,3x3)+ReLU+pool2 -> flatten -> Dense(256)+ReLU.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class SmallCNN(nn.Module):
  conv_widths: Sequence[int] = (32, 64)
  feature_dim: int = 256
  use_batch_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # x: [N, H, W, C] float32
    for width in self.conv_widths:
      x = nn.Conv(width, (3, 3), padding="SAME")(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.feature_dim)(x))
    return x  # [N, feature_dim]
