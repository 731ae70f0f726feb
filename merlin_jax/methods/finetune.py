"""Fine-tuning: phi <- phi_pre, theta_t random; min over all layers of L_{D_t}(theta_t, phi)."""

from merlin_jax.methods.base import TARGET_BATCH_SIZE, Method, check_target_batch
from merlin_jax.methods.target_only import objective

METHOD = Method("finetune", objective, uses_source=False, needs_pretrained=True,
                eval_head="learned", description="L_tgt on all layers from pre-trained weights",
                hyperparameters=(TARGET_BATCH_SIZE,), check_data=check_target_batch)
