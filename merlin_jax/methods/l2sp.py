"""L2-SP (Li et al. 2018): fine-tuning with the backbone pulled toward its pre-trained w0.

L_tgt + alpha/2 ||w - w0||^2 (backbone) + beta/2 ||theta_t||^2 (new head weights).
"""

from merlin_jax import losses
from merlin_jax.methods.base import HParam, at_least, fine_tuning_method
from merlin_jax.methods.target_only import target_objective


def objective(ctx, params, state, batch, key, anchor=None):
  if anchor is None:
    raise ValueError("l2sp needs the pre-trained backbone params as `anchor`")
  tgt_loss, new_state, metrics = target_objective(ctx, params, state, batch, key)
  sp = losses.l2_distance_sq(params["backbone"], anchor)
  head_l2 = losses.l2_norm_sq(params["target_head"]["w"])
  loss = tgt_loss + 0.5 * ctx.hp.alpha * sp + 0.5 * ctx.hp.beta * head_l2
  metrics.update(loss=loss, l2sp_distance_sq=sp)
  return loss, (new_state, metrics)


METHOD = fine_tuning_method(
    "l2sp", objective, "L_tgt + alpha/2 ||w-w0||^2 + beta/2 ||head||^2 from pre-trained",
    (HParam("alpha", 0.5, "pull of the backbone to w0", at_least(0)),
     HParam("beta", 0.01, "weight decay of the new head", at_least(0))),
    uses_anchor=True)
