"""Target-only: min_{theta_t, phi} L_{D_t}(theta_t, phi) from random init."""

from merlin_jax.methods.base import (TARGET_BATCH_SIZE, Method, backbone_features,
                                     check_target_batch, sample_target_batch, target_loss)


def target_objective(ctx, params, state, batch, key):
  """L_tgt on a target minibatch with the learned head (shared by the target-side methods)."""
  target = sample_target_batch(ctx, key, batch["target"])
  _, f_tgt, new_state = backbone_features(ctx, params, state, None, target["inputs"])
  loss, metrics = target_loss(ctx, params, f_tgt, target["label"])
  return loss, new_state, metrics


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  loss, new_state, metrics = target_objective(ctx, params, state, batch, key)
  metrics["loss"] = loss
  return loss, (new_state, metrics)


METHOD = Method("target_only", objective, uses_source=False, needs_pretrained=False,
                eval_head="learned", description="L_tgt from random init",
                hyperparameters=(TARGET_BATCH_SIZE,), check_data=check_target_batch)
