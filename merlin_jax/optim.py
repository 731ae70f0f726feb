"""The outer optimiser: `make_optimizer(config.optimizer, total_steps)` (an optax chain)."""

from __future__ import annotations

import optax


def learning_rate(opt_cfg, total_steps: int):
  """The outer learning rate: a float or an optax schedule (step -> lr)."""
  # The choices of optimizer.schedule and optimizer.name are declared in merlin_jax/keys.py
  # and checked before a run starts.
  if opt_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, opt_cfg.lr, opt_cfg.warmup_steps,
                                              max(total_steps, opt_cfg.warmup_steps + 1))
  return (optax.linear_schedule(0.0, opt_cfg.lr, opt_cfg.warmup_steps) if opt_cfg.warmup_steps
          else opt_cfg.lr)


def lr_at(opt_cfg, total_steps: int, step: int) -> float:
  """The learning rate of outer step `step` (0-based), for the logs."""
  lr = learning_rate(opt_cfg, total_steps)
  return float(lr(step)) if callable(lr) else float(lr)


# optimizer.name -> the optax transformation (its choices in merlin_jax/keys.py: a test
# keeps the two in step).
OPTIMIZERS = {
    "adam": lambda lr, c: optax.adam(lr),
    "adamw": lambda lr, c: optax.adamw(lr, weight_decay=c.weight_decay),
    "sgd": lambda lr, c: optax.sgd(lr),
    "momentum": lambda lr, c: optax.sgd(lr, momentum=c.momentum, nesterov=True),
}


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate(opt_cfg, total_steps)
  name = opt_cfg.name
  opt = OPTIMIZERS[name](lr, opt_cfg)
  chain = []
  if opt_cfg.grad_clip:
    chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  if opt_cfg.weight_decay and name != "adamw":
    chain.append(optax.add_decayed_weights(opt_cfg.weight_decay))
  chain.append(opt)
  return optax.chain(*chain)
