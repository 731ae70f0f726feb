"""Backbones (feature extractors h_phi) and heads.

A backbone is a Flax Linen module `module.apply(variables, x, train=...) -> features`,
wrapped by `Backbone` into pure functions over (params, state) so that methods never touch
Flax collections directly. Add a backbone with `register_backbone` (here, or from your own
code): a module factory and, if its pre-trained weights come in another layout, a reader.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from merlin_jax.errors import ConfigError
from merlin_jax.models import bert, cnn, resnet, weights
from merlin_jax.models.dtype import DTYPES, compute_dtype  # noqa: F401  (re-export)
from merlin_jax.models.heads import apply_head, init_head  # noqa: F401  (re-export)


def _small_cnn(cfg):
  return cnn.SmallCNN(conv_widths=tuple(cfg.get("conv_widths", (32, 64))),
                      feature_dim=cfg.get("feature_dim", 256),
                      use_batch_norm=cfg.get("batch_norm", False), dtype=compute_dtype(cfg),
                      conv_batch_chunk=_conv_batch_chunk(cfg.get("conv_batch_chunk", -1)))


def _conv_batch_chunk(value: int) -> int:
  return cnn.default_conv_batch_chunk() if value < 0 else value


def _resnet18(cfg):
  return resnet.ResNet18(small_inputs=cfg.get("small_inputs", False), dtype=compute_dtype(cfg),
                         remat=bool(cfg.get("remat", False)))


def _resnet50(cfg):
  return resnet.ResNet50(small_inputs=cfg.get("small_inputs", False), dtype=compute_dtype(cfg),
                         remat=bool(cfg.get("remat", False)))


def read_export_weights(path: str) -> dict:
  """The flat weights ('params/backbone/...', 'model_state/...') of a merlin_jax export: a
  .safetensors file or a workdir holding model.safetensors."""
  from merlin_jax.runtime import checkpointing  # orbax: only when weights are loaded
  return checkpointing.load_safetensors(checkpointing.resolve_pretrained(path))


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """How to build a backbone from `config.model` and read its pre-trained weights.

  factory(model_cfg) -> a Linen module `apply(variables, x, train=...) -> features`.
  read_weights(path) -> flat {name: array} in the export layout ('params/backbone/...'),
  for `config.pretrained.path` (default: a merlin_jax export).
  """
  factory: Callable[[Any], nn.Module]
  read_weights: Callable[[str], dict] = read_export_weights


_BACKBONES: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec(_small_cnn),
    "resnet18": BackboneSpec(_resnet18),
    "resnet50": BackboneSpec(_resnet50),
    # text: inputs are {'input_ids', 'token_type_ids', 'attention_mask'}; pre-trained
    # weights may also be a Hugging Face BERT directory or the MiniLM alias.
    "bert": BackboneSpec(bert.make_bert, weights.read_pretrained),
}


def register_backbone(name: str, factory: Callable[[Any], nn.Module],
                      read_weights: Callable[[str], dict] = read_export_weights) -> None:
  """Makes `config.model.name = name` build `factory(config.model)` (from your own code)."""
  _BACKBONES[name] = BackboneSpec(factory, read_weights)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """h_phi as pure functions.

  params: the 'params' collection; state: every other collection (e.g. 'batch_stats'),
  possibly empty. `read_weights(path)`: the flat pre-trained weights at `path`.
  """
  module: nn.Module
  feature_dim: int
  read_weights: Callable[[str], dict] = read_export_weights

  def init(self, key: jax.Array, example_input: jax.Array):
    variables = self.module.init(key, pixels_to_float(example_input), train=False)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables

  def features(self, params, state, x, train: bool):
    """Returns (features [N, D], new_state). In train mode batch-norm statistics come from
    this batch and the running averages in new_state are updated once (per call).

    uint8 pixels become float32 in [0, 1] here, only for the rows passed in (so a pool kept
    in uint8 costs a quarter); features are float32 whatever the compute dtype: heads,
    losses and the inner solve run in float32.
    """
    variables = {"params": params, **state}
    x = pixels_to_float(x)
    if train and state:
      feats, updates = self.module.apply(variables, x, train=True, mutable=list(state.keys()))
      return feats.astype(jnp.float32), dict(updates)
    return self.module.apply(variables, x, train=train).astype(jnp.float32), state


def pixels_to_float(x):
  """uint8 leaves -> float32 k/255, exactly as the data pipeline (data/sources.py) scales
  them; every other leaf (float pixels, token ids) as is."""
  def convert(a):
    if a.dtype == jnp.uint8:
      return a.astype(jnp.float32) * jnp.float32(1.0 / 255.0)
    return a
  return jax.tree.map(convert, x)


def make_backbone(model_cfg, example_input_shape, dtype=jnp.float32) -> Backbone:
  name = model_cfg.name
  if name not in _BACKBONES:
    raise ConfigError("model.name", f"unknown backbone {name!r}; choose one of {sorted(_BACKBONES)}")
  spec = _BACKBONES[name]
  module = spec.factory(model_cfg)
  example = pixels_to_float(example_input(example_input_shape, dtype))
  shape = jax.eval_shape(lambda: module.init(jax.random.key(0), example))
  out = jax.eval_shape(lambda v: module.apply(v, example), shape)
  return Backbone(module=module, feature_dim=int(out.shape[-1]), read_weights=spec.read_weights)


def example_input(shape_or_example, dtype=jnp.float32):
  """A shape tuple -> zeros of that shape; a pytree of arrays (e.g. text token ids) as is."""
  if isinstance(shape_or_example, (tuple, list)) and all(
      isinstance(d, (int, np.integer)) for d in shape_or_example):
    return jnp.zeros(tuple(shape_or_example), dtype)
  return shape_or_example
