"""Joint training: min (1 - alpha) L_{D_s}(theta_s, phi) + alpha L_{D_t}(theta_t, phi)."""

from merlin_jax.methods.base import (TARGET_BATCH_SIZE, HParam, Method, backbone_features,
                                     check_target_batch, sample_target_batch, source_loss,
                                     target_loss)


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  source = batch["source"]
  target = sample_target_batch(ctx, key, batch["target"])
  f_src, f_tgt, new_state = backbone_features(ctx, params, state, source["inputs"],
                                              target["inputs"])
  src_loss, metrics = source_loss(ctx, params, f_src, source["label"])
  tgt_loss, tgt_metrics = target_loss(ctx, params, f_tgt, target["label"])
  metrics.update(tgt_metrics)
  alpha = ctx.hp.alpha
  loss = (1.0 - alpha) * src_loss + alpha * tgt_loss
  metrics["loss"] = loss
  return loss, (new_state, metrics)


ALPHA = HParam("alpha", 0.5, "weight of L_tgt (chosen on target validation)",
               lambda a: None if 0.0 <= a <= 1.0 else
               f"joint training needs 0 <= alpha <= 1, got {a}")

METHOD = Method("joint", objective, uses_source=True, needs_pretrained=False,
                eval_head="learned", description="(1-alpha) L_src + alpha L_tgt from random init",
                hyperparameters=(ALPHA, TARGET_BATCH_SIZE), check_data=check_target_batch)
