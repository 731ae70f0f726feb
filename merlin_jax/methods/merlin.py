"""MeRLin: min_{phi, theta_s}  L_{D_s}(theta_s, phi) + rho * L_meta,t(phi)   (Algorithm 1, l. 9)."""

from merlin_jax.methods.base import Method
from merlin_jax.methods.meta import META_HPARAMS, check_split, merlin_terms


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  src_loss, meta_loss, new_state, metrics = merlin_terms(ctx, params, state, batch, key,
                                                         with_source=True)
  loss = src_loss + ctx.hp.rho * meta_loss
  metrics["loss"] = loss
  return loss, (new_state, metrics)


METHOD = Method("merlin", objective, uses_source=True, needs_pretrained=False,
                eval_head="probe", hyperparameters=META_HPARAMS, check_data=check_split,
                description="L_src + rho * L_meta,t, from random init (Table 1)")
