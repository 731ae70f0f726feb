"""Joint training: min (1 - alpha) L_{D_s}(theta_s, phi) + alpha L_{D_t}(theta_t, phi)."""

from merlin_jax.methods.base import (Method, backbone_features, sample_target_batch,
                                     source_loss, target_loss)


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  source = batch["source"]
  target = sample_target_batch(key, batch["target"], ctx.hp.target_batch_size)
  f_src, f_tgt, new_state = backbone_features(ctx, params, state, source["image"],
                                              target["image"])
  src_loss, metrics = source_loss(ctx, params, f_src, source["label"])
  tgt_loss, tgt_metrics = target_loss(ctx, params, f_tgt, target["label"])
  metrics.update(tgt_metrics)
  alpha = ctx.hp.alpha
  loss = (1.0 - alpha) * src_loss + alpha * tgt_loss
  metrics["loss"] = loss
  return loss, (new_state, metrics)


METHOD = Method("joint", objective, uses_source=True, needs_pretrained=False,
                eval_head="learned", description="(1-alpha) L_src + alpha L_tgt from random init")
