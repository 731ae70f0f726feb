"""What every method shares: the objective signature, one backbone pass, the two losses.

A method is one pure objective

    objective(ctx, params, state, batch, key, anchor) -> (loss, (new_state, metrics))

params : {'backbone': ..., 'source_head': {'w','b'}, 'target_head': {'w','b'}}
state  : the backbone's non-trainable collections (e.g. {'batch_stats': ...}; may be {})
batch  : {'source': {'image', 'label'} or None,
          'target': {'image', 'label'}}   # the whole labelled target-train pool, on device
         'image' is the model input: pixels [N, H, W, C], or any pytree of arrays with a
         leading batch axis (e.g. a dict of token arrays for a text backbone).
key    : per-step PRNG key (split resampling, head init, target minibatch)
anchor : the pre-trained backbone params w0 (L2-SP), else None

and a few facts the training program needs (does it read the source? does it start from
pre-trained weights? how is its target accuracy evaluated?). Each method lives in its own
module in this package and registers a `Method` named `METHOD`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from merlin_jax import losses
from merlin_jax.errors import ConfigError
from merlin_jax.inner import InnerConfig
from merlin_jax.models import Backbone, apply_head


@dataclasses.dataclass(frozen=True)
class Hyper:
  """The hyperparameters objectives read (static under jit)."""
  num_source_classes: int
  num_target_classes: int
  rho: float = 1.0                   # MeRLin: weight of L_meta,t
  alpha: float = 0.5                 # joint: weight of L_tgt; L2-SP: backbone pull to w0
  beta: float = 0.01                 # L2-SP: weight decay of the new head
  inner: InnerConfig = InnerConfig()
  split_train_size: int = 100        # MeRLin: |D_t^tr| per outer step
  split_val_size: int = 100          # MeRLin: |D_t^val| per outer step
  target_batch_size: int = 0         # other methods: target examples per step (0 = all)
  label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class Context:
  backbone: Backbone
  hp: Hyper


Objective = Callable[..., tuple[jax.Array, tuple[Any, dict]]]


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  objective: Objective
  uses_source: bool            # reads batch['source']
  needs_pretrained: bool       # starts from pre-trained backbone weights (two-stage)
  eval_head: str               # 'learned': params['target_head']; 'probe': fit a head on
                               # frozen target-train features with the inner solver
  description: str = ""
  # True: the model reported (and exported) is the one selected on target validation.
  # False: the final model (pre-training: phi_pre is what source training ends with; choosing
  # it on the target would make the first stage target-aware).
  select_on_target_val: bool = True

  def __post_init__(self):
    if self.eval_head not in ("learned", "probe"):
      raise ValueError(f"eval_head must be 'learned' or 'probe', got {self.eval_head!r}")


# ---------------------------------------------------------------------------------------
# Shared pieces.


def backbone_features(ctx: Context, params, state, source_images, target_images,
                      train: bool = True):
  """One backbone pass over [source; target] (either may be None).

  Returns (source_features or None, target_features or None, new_state). One pass means
  batch-norm statistics come from the combined batch and running averages update once.
  """
  parts = [x for x in (source_images, target_images) if x is not None]
  x = parts[0] if len(parts) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *parts)
  feats, new_state = ctx.backbone.features(params["backbone"], state, x, train)
  n_src = 0 if source_images is None else batch_size(source_images)
  f_src = feats[:n_src] if source_images is not None else None
  f_tgt = feats[n_src:] if target_images is not None else None
  return f_src, f_tgt, new_state


def batch_size(inputs) -> int:
  return jax.tree.leaves(inputs)[0].shape[0]


def take(tree, idx):
  """Rows `idx` of every array in `tree` (inputs may be pytrees)."""
  return jax.tree.map(lambda a: a[idx], tree)


def sample_target_batch(key, target, size: int):
  """A random subset of `size` examples of the target pool (all of it, permuted, if 0)."""
  n = target["label"].shape[0]
  size = n if size in (0, None) else size
  if size > n:
    raise ConfigError("target_batch_size", f"{size} exceeds the {n} target-train examples; lower it")
  idx = jax.random.permutation(key, n)[:size]
  return take(target, idx)


def source_loss(ctx: Context, params, f_src, y_src):
  """L_{D_s}(theta_s, phi) on a source batch; returns (loss, metrics)."""
  logits = apply_head(params["source_head"], f_src)
  loss = losses.softmax_cross_entropy(logits, y_src, ctx.hp.label_smoothing)
  return loss, {"source_loss": loss, "source_accuracy": losses.accuracy(logits, y_src)}


def target_loss(ctx: Context, params, f_tgt, y_tgt):
  """L_{D_t}(theta_t, phi) with the learned target head; returns (loss, metrics)."""
  logits = apply_head(params["target_head"], f_tgt)
  loss = losses.softmax_cross_entropy(logits, y_tgt, ctx.hp.label_smoothing)
  return loss, {"target_loss": loss, "target_accuracy": losses.accuracy(logits, y_tgt)}
