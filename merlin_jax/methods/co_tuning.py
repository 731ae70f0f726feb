"""Co-Tuning (You et al., NeurIPS 2020): fine-tuning that keeps the source head as a
second, auxiliary target.

L_tgt + weight * CE(source_head(f(x)), p(y_s | y_t = y))

The pre-trained network (backbone and source head, both the start of training) gives the
class relationship p(y_s | y_t): for each target class, the mean of the pre-trained source
head's softmax over the target-train examples of that class (the paper's direct
approach), computed once at the start and kept as the `anchor`. Training then fits the
target head on the labels and the source head on the source-class distributions the
labels translate to, so the pre-trained head's knowledge keeps shaping the features.
"""

import jax
import jax.numpy as jnp
import numpy as np

from merlin_jax.methods.base import (HParam, at_least, backbone_features, fine_tuning_method,
                                     sample_target_batch, target_loss)
from merlin_jax.models import apply_head

CHUNK = 256   # target-pool rows per forward pass when the relationship is computed


def class_relationship(ctx, params, model_state, target_pool):
  """p(y_s | y_t) [K_t, K_s]: the mean pre-trained source-head softmax per target class (a
  class without examples: uniform)."""
  @jax.jit
  def source_probs(x):
    f = ctx.backbone.features(params["backbone"], model_state, x, train=False)[0]
    return jax.nn.softmax(apply_head(params["source_head"], f))

  inputs, labels = target_pool["inputs"], np.asarray(target_pool["label"])
  n = labels.shape[0]
  probs = np.concatenate([np.asarray(source_probs(jax.tree.map(lambda a: a[i:i + CHUNK],
                                                               inputs)))
                          for i in range(0, n, CHUNK)])                   # [N, K_s]
  k_t, k_s = ctx.hp.num_target_classes, probs.shape[1]
  relation = np.full((k_t, k_s), 1.0 / k_s, np.float32)
  for c in range(k_t):
    if np.any(labels == c):
      relation[c] = probs[labels == c].mean(axis=0)
  return {"relationship": jnp.asarray(relation)}


def objective(ctx, params, state, batch, key, anchor=None):
  if anchor is None:
    raise ValueError("co_tuning needs the class relationship as `anchor`")
  target = sample_target_batch(ctx, key, batch["target"])
  _, f_tgt, new_state = backbone_features(ctx, params, state, None, target["inputs"])
  tgt_loss, metrics = target_loss(ctx, params, f_tgt, target["label"])
  soft = anchor["relationship"][target["label"]]                            # [B, K_s]
  log_q = jax.nn.log_softmax(apply_head(params["source_head"], f_tgt))
  aux = -jnp.mean(jnp.sum(soft * log_q, axis=-1))
  loss = tgt_loss + ctx.hp.co_tuning_weight * aux
  metrics.update(loss=loss, co_tuning_source_loss=aux)
  return loss, (new_state, metrics)


METHOD = fine_tuning_method(
    "co_tuning", objective,
    "L_tgt + weight * CE(source head, p(y_s | y_t)) from pre-trained backbone and source head",
    (HParam("co_tuning.weight", 1.0, "weight of the source-head term (ours)",
            at_least(0)),),
    uses_anchor=True, pretrained_heads=("source_head",), make_anchor=class_relationship)
