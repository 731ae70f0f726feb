"""The outer optimiser: `make_optimizer(config.optimizer, total_steps)` (an optax chain)."""

from __future__ import annotations

import optax

from merlin_jax.errors import ConfigError


def learning_rate(opt_cfg, total_steps: int):
  """The outer learning rate: a float or an optax schedule (step -> lr)."""
  if opt_cfg.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, opt_cfg.lr, opt_cfg.warmup_steps,
                                            max(total_steps, opt_cfg.warmup_steps + 1))
  elif opt_cfg.schedule == "constant":
    lr = (optax.linear_schedule(0.0, opt_cfg.lr, opt_cfg.warmup_steps) if opt_cfg.warmup_steps
          else opt_cfg.lr)
  else:
    raise ConfigError("optimizer.schedule", f"unknown schedule {opt_cfg.schedule!r}; use constant or cosine")
  return lr


def lr_at(opt_cfg, total_steps: int, step: int) -> float:
  """The learning rate of outer step `step` (0-based), for the logs."""
  lr = learning_rate(opt_cfg, total_steps)
  return float(lr(step)) if callable(lr) else float(lr)


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate(opt_cfg, total_steps)
  name = opt_cfg.name
  if name == "adam":
    opt = optax.adam(lr)
  elif name == "adamw":
    opt = optax.adamw(lr, weight_decay=opt_cfg.weight_decay)
  elif name == "sgd":
    opt = optax.sgd(lr)
  elif name == "momentum":
    opt = optax.sgd(lr, momentum=opt_cfg.momentum, nesterov=True)
  else:
    raise ConfigError("optimizer.name", f"unknown optimizer {name!r}; use adam, adamw, sgd or momentum")
  chain = []
  if opt_cfg.grad_clip:
    chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  if opt_cfg.weight_decay and name != "adamw":
    chain.append(optax.add_decayed_weights(opt_cfg.weight_decay))
  chain.append(opt)
  return optax.chain(*chain)
