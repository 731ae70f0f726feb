"""The objective check: each method's objective at its trained params and at hand-built solutions.

It tells an optimisation failure (the transferable solution u scores lower but gradient descent
does not find it) from an objective that prefers something else (docs/theory.md, "Design").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from merlin_jax.experiments.theory import model
from merlin_jax.experiments.theory.model import TheoryConfig


def constructed_phi(cfg: TheoryConfig, data, which: str):
  """phi of a hand-built source solution: one unit along u, or k units spanning V, each scaled
  to the weight-decay optimum with its source head (|phi_j|^2 w_j = amplitude, min |phi_j|^2 +
  w_j^2); the heads for a given objective come from best_heads."""
  if which == "u":
    dirs, amp = data["u"][None, :], 1.0
  elif which == "V":
    dirs, amp = data["v"].T, 1.0 / cfg.c
  else:
    raise ValueError(which)
  s2 = (2 * amp ** 2) ** (1 / 3)          # argmin_s2 s2 + (amp / s2)^2
  return jnp.zeros((cfg.width, cfg.d)).at[:dirs.shape[0]].set(jnp.sqrt(s2) * dirs)


def ridge_head(feats, y, weight: float, wd: float):
  """argmin_{w,b} weight * mean((F w + b - y)^2) + wd/2 |w|^2, in closed form (b unpenalised)."""
  return model.fit_head_ridge_regression(feats, y, wd / (2 * weight), relative=False)


def best_heads(cfg: TheoryConfig, method: str, phi, data):
  """The heads minimising `method`'s objective at a fixed phi (each term is a ridge problem in its
  head). MeRLin's target head is its inner ridge solve, so head_t is unused there (zeros)."""
  w_src = 1 - cfg.alpha if method == "joint" else 1.0
  head_s = ridge_head(model.features(phi, data["x_s"]), data["y_s"], w_src, cfg.weight_decay)
  if method == "joint":
    head_t = ridge_head(model.features(phi, data["x_t"]), data["y_t"], cfg.alpha,
                        cfg.weight_decay)
  else:
    head_t = {"w": jnp.zeros(cfg.width), "b": jnp.zeros(())}
  return {"phi": phi, "head_s": head_s, "head_t": head_t}


def method_objective(cfg: TheoryConfig, method: str, params, data, n_splits: int = 100):
  """The method's training objective (incl. weight decay); MeRLin's averaged over random splits."""
  loss_fn = model.make_loss(cfg, method)
  if method != "merlin":
    return loss_fn(params, data, None)
  keys = jax.random.split(jax.random.PRNGKey(123), n_splits)
  return jnp.mean(jax.vmap(lambda k: loss_fn(params, data, k))(keys))


SCALES = np.exp(np.linspace(np.log(0.1), np.log(30.0), 121))  # phi -> t phi, relative to the build


def best_scaled_solution(cfg: TheoryConfig, method: str, data, which: str):
  """The hand-built u / V solution at its best scale and heads for `method`'s objective.

  phi is the constructed solution's (one unit along u, or k units spanning V) times a common
  scale t from SCALES; at each t the heads are the closed-form minimisers of the method's
  objective (best_heads): for joint this includes the target head, which for V is the ridge
  head that (partly) memorises D_t through the k V-features. Returns (params, t, objective).
  """
  phi0 = constructed_phi(cfg, data, which)

  @jax.jit
  def objective_at(t):
    return method_objective(cfg, method, best_heads(cfg, method, t * phi0, data), data)

  objs = np.array([float(objective_at(t)) for t in SCALES])
  objs = np.where(np.isfinite(objs), objs, np.inf)   # float32 solves can fail far from the optimum
  i = int(np.argmin(objs))
  return best_heads(cfg, method, SCALES[i] * phi0, data), float(SCALES[i]), float(objs[i])


def objective_row(cfg: TheoryConfig, method: str, data, trained):
  """`method`'s objective and target test MSE at its trained params and at the hand-built u and V
  solutions (best scale and heads for this objective). Also the scales t chosen."""
  row = {"method": method,
         "trained": (float(method_objective(cfg, method, trained, data)),
                     float(model.evaluate(cfg, method, trained, data)["test_mse"]))}
  for which in ("u", "V"):
    params, t, obj = best_scaled_solution(cfg, method, data, which)
    row[which] = (obj, float(model.evaluate(cfg, method, params, data)["test_mse"]))
    row["scale_" + which] = t
  return row


def objective_check(cfg: TheoryConfig, trained):
  """Per seed and method: the method's objective and target test MSE at its trained params
  (`trained`: {method: [params per seed]}, from model.run_all) and at the hand-built u and V
  solutions. Tells an optimisation failure (u scores lower but is not found) from an
  objective that prefers something else."""
  rows = []
  for seed in range(len(next(iter(trained.values())))):
    data = model.make_data(cfg, seed)
    for method, params in trained.items():
      rows.append({"seed": seed, **objective_row(cfg, method, data, params[seed])})
  return rows
