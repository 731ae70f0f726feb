"""DELTA (Li et al., ICLR 2019): fine-tuning with attentive feature-map regularisation.

L_tgt + alpha * sum_j a_j mean_i (f_ij(w) - f_ij(w0))^2 + beta/2 ||theta_t||^2

pulls the *behaviour* of the network (its features on the target inputs) toward the
pre-trained network's, not its weights (as L2-SP does), channel by channel, weighted by
how much each channel matters to the target task: a_j = D * softmax_j(dL_j), with dL_j the
rise of the target loss of a head fitted on the pre-trained features when channel j is
zeroed (the paper's supervised attention; a uniform a_j is 1). Ours, where the paper is not
specific to this setting: the regularised features are the backbone's output features;
the attention head is fitted on each step's minibatch by the configured inner solver.
"""

import dataclasses

import jax
import jax.numpy as jnp

from merlin_jax import inner as inner_lib, losses
from merlin_jax.methods.base import (HParam, at_least, backbone_features, fine_tuning_method,
                                     sample_target_batch, target_loss)
from merlin_jax.models import apply_head


def channel_attention(features0, labels, head):
  """a_j = D * softmax_j(loss with channel j zeroed - loss): features0 [B, D] -> [D]."""
  base = losses.softmax_cross_entropy(apply_head(head, features0), labels)
  d = features0.shape[-1]
  masks = 1.0 - jnp.eye(d, dtype=features0.dtype)                    # [D, D]: row j drops j
  dropped = jax.vmap(lambda m: losses.softmax_cross_entropy(
      apply_head(head, features0 * m), labels))(masks)                # [D]
  return d * jax.nn.softmax(dropped - base)


def objective(ctx, params, state, batch, key, anchor=None):
  if anchor is None:
    raise ValueError("delta needs the pre-trained backbone params as `anchor`")
  k_batch, k_head = jax.random.split(key)
  target = sample_target_batch(ctx, k_batch, batch["target"])
  _, f_tgt, new_state = backbone_features(ctx, params, state, None, target["inputs"])
  # The pre-trained network's features of the same inputs (batch-norm layers, if any,
  # normalise with this batch's statistics, so no running state of either network enters).
  f0 = jax.lax.stop_gradient(ctx.backbone.features(anchor, state, target["inputs"], True)[0])
  probe = dataclasses.replace(ctx.hp.inner, first_order=True)
  head0 = inner_lib.fit_head(probe, f0, target["label"], ctx.hp.num_target_classes, k_head)
  attention = jax.lax.stop_gradient(channel_attention(f0, target["label"], head0))
  behaviour = jnp.sum(attention * jnp.mean(jnp.square(f_tgt - f0), axis=0))
  tgt_loss, metrics = target_loss(ctx, params, f_tgt, target["label"])
  head_l2 = losses.l2_norm_sq(params["target_head"]["w"])
  loss = tgt_loss + ctx.hp.delta_alpha * behaviour + 0.5 * ctx.hp.delta_beta * head_l2
  metrics.update(loss=loss, delta_behaviour=behaviour)
  return loss, (new_state, metrics)


METHOD = fine_tuning_method(
    "delta", objective, "L_tgt + attention-weighted ||f(w) - f(w0)||^2 + beta/2 ||head||^2",
    (HParam("delta.alpha", 0.01, "weight of the feature regulariser (paper: 0.01)",
            at_least(0)),
     HParam("delta.beta", 0.01, "weight decay of the new head", at_least(0))),
    uses_anchor=True)
