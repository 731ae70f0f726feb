"""The meta-objective term shared by MeRLin and MeRLin-ft (Algorithm 1, lines 4-9).

Features for the resampled target split are computed in the same backbone pass as the
source batch; the inner solver then runs on features only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from merlin_jax import inner as inner_lib
from merlin_jax.methods.base import Context, backbone_features, source_loss, take


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
  x_t, y_t = take(target["image"], idx), target["label"][idx]
  source = batch["source"] if with_source else None
  f_src, f_tgt, new_state = backbone_features(
      ctx, params, state, None if source is None else source["image"], x_t, train=True)
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
