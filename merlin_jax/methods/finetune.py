"""Fine-tuning: phi <- phi_pre, theta_t random; min over all layers of L_{D_t}(theta_t, phi)."""

from merlin_jax.methods.base import fine_tuning_method
from merlin_jax.methods.target_only import objective

METHOD = fine_tuning_method("finetune", objective,
                            "L_tgt on all layers from pre-trained weights")
