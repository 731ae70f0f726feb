"""Pre-training: min_{theta_s, phi} L_{D_s}(theta_s, phi) from random init."""

from merlin_jax.methods.base import Method, backbone_features, source_loss


def objective(ctx, params, state, batch, key, anchor=None):
  del key, anchor
  source = batch["source"]
  f_src, _, new_state = backbone_features(ctx, params, state, source["inputs"], None)
  loss, metrics = source_loss(ctx, params, f_src, source["label"])
  metrics["loss"] = loss
  return loss, (new_state, metrics)


METHOD = Method("pretrain", objective, uses_source=True, needs_pretrained=False,
                eval_head="probe", description="L_src only; target accuracy by a fitted head",
                select_on_target_val=False)
