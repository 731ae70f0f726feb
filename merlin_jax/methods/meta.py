"""The meta-objective term shared by MeRLin and MeRLin-ft (Algorithm 1, lines 4-9).

Features for the resampled target split are computed in the same backbone pass as the
source batch; the inner solver then runs on features only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from merlin_jax import inner as inner_lib
from merlin_jax.errors import ConfigError
from merlin_jax.methods.base import (Context, HParam, Hyper, above, at_least,
                                     backbone_features, source_loss, take_from_pool)

# The hyperparameters of the meta-objective (the inner solver is `config.inner`, shared
# with the probe evaluation).
META_HPARAMS = (
    HParam("rho", 1.0, "weight of L_meta,t", at_least(0)),
    HParam("split.train_size", 100, "|D_t^tr| per outer step (Alg. 1, l. 5)", above(0)),
    HParam("split.val_size", 100, "|D_t^val| per outer step", above(0)),
)


def check_split(hp: Hyper, num_target_train: int) -> None:
  """The per-step split must fit in the target-train pool."""
  need = hp.split_train_size + hp.split_val_size
  if need > num_target_train:
    raise ConfigError("split", f"train_size + val_size = {need} exceeds the "
                      f"{num_target_train} target training examples; lower "
                      "split.train_size/val_size")


def merlin_terms(ctx: Context, params, state, batch, key, with_source: bool):
  """Returns (L_src or 0, L_meta,t, new_state, metrics)."""
  hp = ctx.hp
  k_split, k_head = jax.random.split(key)
  target = batch["target"]
  n_target = target["label"].shape[0]
  # l. 5: resample D_t^tr / D_t^val.
  train_idx, val_idx = inner_lib.resample_target_split(
      k_split, n_target, hp.split_train_size, hp.split_val_size)
  idx = jnp.concatenate([train_idx, val_idx])
  x_t, y_t = take_from_pool(target["inputs"], idx, ctx.rows), target["label"][idx]
  source = batch["source"] if with_source else None
  f_src, f_tgt, new_state = backbone_features(
      ctx, params, state, None if source is None else source["inputs"], x_t, train=True)
  n_tr = hp.split_train_size
  # l. 4, 6-8: init theta_t^[0], n inner steps on D_t^tr features; val loss of theta_t^[n].
  meta_loss, metrics = inner_lib.meta_target_loss(
      hp.inner, f_tgt[:n_tr], y_t[:n_tr], f_tgt[n_tr:], y_t[n_tr:], hp.num_target_classes, k_head)
  if source is not None:
    src_loss, src_metrics = source_loss(ctx, params, f_src, source["label"])
    metrics.update(src_metrics)
  else:
    src_loss = jnp.zeros((), meta_loss.dtype)
  return src_loss, meta_loss, new_state, metrics
