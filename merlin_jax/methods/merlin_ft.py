"""MeRLin-ft: from pre-trained weights, min_phi rho * L_meta,t(phi) on the target only (Table 2)."""

from merlin_jax.methods.base import Method
from merlin_jax.methods.meta import META_HPARAMS, check_split, merlin_terms


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  _, meta_loss, new_state, metrics = merlin_terms(ctx, params, state, batch, key,
                                                  with_source=False)
  loss = ctx.hp.rho * meta_loss
  metrics["loss"] = loss
  return loss, (new_state, metrics)


METHOD = Method("merlin_ft", objective, uses_source=False, needs_pretrained=True,
                eval_head="probe", hyperparameters=META_HPARAMS, check_data=check_split,
                description="rho * L_meta,t only, from pre-trained weights (Table 2)")
