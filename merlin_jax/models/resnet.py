"""ResNet-18 / ResNet-50 feature extractors (after the flax imagenet example).

Returns globally pooled features [N, 512] (ResNet-18) or [N, 2048] (ResNet-50); the
classifier heads live outside (models/heads.py). Batch norm: `train=True` uses batch
statistics and returns updated running averages (collection 'batch_stats');
`train=False` uses the running averages.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class Block(nn.Module):
  """What both residual blocks are built from."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)


class ResNetBlock(Block):
  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class BottleneckResNetBlock(Block):
  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_filters: int = 64
  small_inputs: bool = False  # 3x3 stem, no max-pool: for 28-64 px images
  dtype: Any = jnp.float32
  act: Callable = nn.relu
  remat: bool = False         # jax.checkpoint per block: the backward keeps block inputs only

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    if self.small_inputs:
      x = conv(self.num_filters, (3, 3), name="conv_init")(x)
      x = nn.relu(norm(name="bn_init")(x))
    else:
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
      x = nn.relu(norm(name="bn_init")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    k = 0
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        # Explicit names: the same parameter tree with and without remat.
        x = block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm,
                      name=f"{self.block_cls.__name__}_{k}")(x)
        k += 1
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [N, C]: pooled in float32


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)
