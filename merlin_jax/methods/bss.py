"""BSS (Chen et al., NeurIPS 2019): fine-tuning with batch spectral shrinkage.

L_tgt + eta * sum_{i=1..k} sigma_{-i}^2, where sigma_{-1} <= sigma_{-2} <= ... are the
smallest singular values of the minibatch's target feature matrix F [B, D]: the
penalty shrinks the feature directions that carry little of the batch (where
untransferable, source-specific components hide), without pulling the weights anywhere.
"""

import jax.numpy as jnp

from merlin_jax.methods.base import (HParam, at_least, backbone_features, fine_tuning_method,
                                     sample_target_batch, target_loss)


def smallest_singular_values_sq(features, k: int):
  """sum of the k smallest squared singular values of features [B, D]."""
  sigma = jnp.linalg.svd(features, compute_uv=False)     # descending, [min(B, D)]
  return jnp.sum(jnp.square(sigma[sigma.shape[0] - k:]))


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  target = sample_target_batch(key, batch["target"], ctx.hp.target_batch_size)
  _, f_tgt, new_state = backbone_features(ctx, params, state, None, target["inputs"])
  tgt_loss, metrics = target_loss(ctx, params, f_tgt, target["label"])
  shrink = smallest_singular_values_sq(f_tgt, ctx.hp.bss_k)
  loss = tgt_loss + ctx.hp.bss_eta * shrink
  metrics.update(loss=loss, bss_penalty=shrink)
  return loss, (new_state, metrics)


METHOD = fine_tuning_method(
    "bss", objective, "L_tgt + eta * sum of the k smallest sigma^2 of the batch features",
    (HParam("bss.eta", 0.001, "weight of the spectral penalty (paper: 0.001)", at_least(0)),
     HParam("bss.k", 1, "how many of the smallest singular values (paper: 1)", at_least(1))))
