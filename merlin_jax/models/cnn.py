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


def batch_chunks(n: int, chunk: int) -> list[tuple[int, int]]:
  """[start, stop) of the fewest consecutive slices of at most `chunk` rows covering
  range(n), of near-equal sizes (no small tail: 328 rows by 64 are 55 x 4 + 54 x 2); one
  slice when chunk <= 0 or chunk >= n."""
  if chunk <= 0 or chunk >= n:
    return [(0, n)]
  k = -(-n // chunk)
  bounds = [i * n // k for i in range(k + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def default_conv_batch_chunk() -> int:
  """`model.conv_batch_chunk = -1` (auto): at most 64 images per convolution on the CPU
  backend, the whole batch elsewhere. On XLA:CPU the BENCH.md step (328 images) runs ~15%
  faster with its convolutions on 6 slices of ~55 images than on the whole batch (the
  kernels' gradient, the costliest part, ~1.5x faster alone); an accelerator wants the whole
  batch. With XLA's own reductions slices of 32 or fewer made the step ~50% slower (the
  bias gradients are then not rewritten into reduce-windows); with YNNPACK's, the package
  default (merlin_jax/__init__.py), 24 to 110 images are within ~3% of 64 (WORKSPACE.md,
  issue 32)."""
  return 64 if jax.default_backend() == "cpu" else 0


class SmallCNN(nn.Module):
  conv_widths: Sequence[int] = (32, 64)
  feature_dim: int = 256
  use_batch_norm: bool = False
  dtype: Any = jnp.float32   # activations / matmuls (parameters stay float32)
  # Convolve the batch in slices of this many images and concatenate (0: in one piece).
  # Each image is convolved on its own either way, so the features are the same (the
  # kernels' gradient sums per slice: the same sum in another order). Never with batch
  # norm, whose statistics span the batch.
  conv_batch_chunk: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # x: [N, H, W, C] float32
    convs = [nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype)
             for width in self.conv_widths]
    norms = [nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)
             if self.use_batch_norm else None for _ in self.conv_widths]

    def blocks(x):
      for conv, norm in zip(convs, norms):
        x = conv(x)
        if norm is not None:
          x = norm(x)
        x = max_pool_2x2(nn.relu(x))
      return x
    chunk = 0 if self.use_batch_norm else self.conv_batch_chunk
    slices = batch_chunks(x.shape[0], chunk)
    x = blocks(x) if len(slices) == 1 else jnp.concatenate([blocks(x[s:e]) for s, e in slices])
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.feature_dim, dtype=self.dtype)(x))
    return x.astype(jnp.float32)  # [N, feature_dim]
