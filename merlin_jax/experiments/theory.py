"""A simulation of the paper's theory setting (Liu et al., arXiv 2011.01418, "theory" part).

The paper proves, for a quadratic neural network and a source distribution with a
transferable and a source-specific feature, that MeRLin recovers the target ground truth
while pre-training and joint training do not. Its exact model is not available to us
(see shared/paper/notes.md), so the design below is OURS, not the paper's (DESIGN_MD has
the long version, docs/theory.md the results):

  features   h_phi(x) = ((phi_j . x)^2)_{j<m},  phi in R^{m x d};  prediction h_phi(x) @ w + b
  u, V       a random unit vector u and an orthonormal basis V [d, k] of a subspace orthogonal
             to u (seeded)
  target     x ~ N(0, I_d),  y = (u . x)^2 + sigma eps;  n_target <= k < d examples
  source     the V-part of x is replaced by sqrt(c) |u . x| xi (xi uniform on V's sphere), so
             y = (u . x)^2 = |P_V x|^2 / c: u (transferable) and V (source-specific, cheaper
             under weight decay when c > k^1.5) both explain the source label; in the target the
             k V-features are noise a head can memorise D_t with. `collinear=True` (k = 1) gives
             the 1-dim variant v . x = sqrt(c) (u . x).
  methods    pre-training (+ ridge head refit on D_t), joint training, MeRLin with a closed-form
             ridge inner head (differentiable through the solve) on resampled D_t^tr / D_t^val
  metrics    target test MSE, max_j cos^2(phi_j, u), energy of phi in V and in u, over steps;
             each method's objective at its trained params vs hand-built u / V solutions at their
             best scale and heads (objective_check)

Run: python -m merlin_jax.experiments.theory --seeds=3 --out=docs/
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from merlin_jax import inner

METHODS = ("pretrain", "joint", "merlin")
LABELS = {"pretrain": "pre-training + ridge refit", "joint": "joint training",
          "merlin": "MeRLin (ridge inner)"}


@dataclasses.dataclass(frozen=True)
class TheoryConfig:
  d: int = 40                 # input dimension
  width: int = 48             # m hidden units (>= k: room for the signature plus spare units)
  k: int = 24                 # dim of the source-specific subspace V (>= n_target)
  collinear: bool = False     # k = 1 only: v . x = sqrt(c) (u . x) (not sqrt(c) |u . x| * random sign)
  c: float = 140.0            # source: |P_V x|^2 = c (u . x)^2  (c > k^1.5 = 118: V is the cheaper solution)
  n_source: int = 1000
  n_target: int = 20          # < k < d: memorisable through the signature units
  n_holdout: int = 30         # extra target examples, only for choosing the refit ridge lambda
  n_test: int = 2000
  target_noise: float = 0.01  # sigma on target labels
  steps: int = 4000
  lr: float = 1e-2
  cosine: bool = True         # cosine-decay the learning rate to 0 over `steps` (all methods)
  weight_decay: float = 1e-2
  init_scale: float = 1.0     # phi_j ~ N(0, init_scale^2 / d I)
  ridge_lambda: float = 1e-2  # inner ridge lambda (see ridge_relative)
  ridge_relative: bool = False  # lambda * mean diagonal of the centred feature Gram (scale-free) or lambda * n (absolute)
  inner_train: int = 14       # |D_t^tr| per MeRLin step; |D_t^val| = n_target - inner_train
  alpha: float = 0.5          # joint
  rho: float = 1.0            # MeRLin
  eval_every: int = 50


# the design documented before this one (relative inner ridge, noisier labels, smaller init)
PREVIOUS_DESIGN = dict(width=28, c=235.0, target_noise=0.1, steps=2000, cosine=False,
                       weight_decay=1e-3, init_scale=0.1, ridge_relative=True)


# ----------------------------------------------------------------------------- data

def directions(key, d, k):
  """A random unit vector u in R^d and an orthonormal basis V [d, k] of a subspace orthogonal to u."""
  q, _ = jnp.linalg.qr(jax.random.normal(key, (d, k + 1)))
  return q[:, 0], q[:, 1:]


def make_data(cfg: TheoryConfig, seed: int):
  """Seeded source / target / holdout / test sets. Returns a dict of arrays."""
  k_dir, k_s, k_t, k_h, k_te, k_n1, k_n2, k_n3 = jax.random.split(jax.random.PRNGKey(seed), 8)
  u, v = directions(k_dir, cfg.d, cfg.k)
  k_z, k_xi = jax.random.split(k_s)
  z = jax.random.normal(k_z, (cfg.n_source, cfg.d))
  xi = jax.random.normal(k_xi, (cfg.n_source, cfg.k))
  xi = xi / jnp.linalg.norm(xi, axis=1, keepdims=True)
  if cfg.collinear:
    xi = jnp.sign(z @ u)[:, None] * jnp.ones((cfg.n_source, cfg.k)) / jnp.sqrt(cfg.k)
  # replace the V-part of z by the signature sqrt(c) |u . z| xi: |P_V x|^2 = c (u . x)^2
  x_s = z - (z @ v) @ v.T + (jnp.sqrt(cfg.c) * jnp.abs(z @ u))[:, None] * (xi @ v.T)
  y_s = (x_s @ u) ** 2

  def target(k, kn, n):
    x = jax.random.normal(k, (n, cfg.d))
    return x, (x @ u) ** 2 + cfg.target_noise * jax.random.normal(kn, (n,))

  x_t, y_t = target(k_t, k_n1, cfg.n_target)
  x_h, y_h = target(k_h, k_n2, cfg.n_holdout)
  x_te, _ = target(k_te, k_n3, cfg.n_test)
  y_te = (x_te @ u) ** 2          # test error against the noiseless ground truth
  return dict(u=u, v=v, x_s=x_s, y_s=y_s, x_t=x_t, y_t=y_t, x_h=x_h, y_h=y_h,
              x_te=x_te, y_te=y_te)


# ----------------------------------------------------------------------------- model

def features(phi, x):
  """h_phi(x) = ((phi_j . x)^2)_j : [N, m]."""
  return (x @ phi.T) ** 2


def predict(phi, head, x):
  return features(phi, x) @ head["w"] + head["b"]


def mse(pred, y):
  return jnp.mean((pred - y) ** 2)


def fit_head_ridge_regression(feats, y, lam_rel: float, relative: bool = True):
  """argmin_{w,b} |F w + b - y|^2 + lam |w|^2, lam = lam_rel * mean diag of centered F^T F.

  inner.fit_head_ridge only fits one-hot (classification) targets, so this is the same
  solve (centering for the unpenalised bias, primal or dual form, differentiable through
  jnp.linalg.solve) for a real-valued target. The relative lambda makes the head
  invariant to rescaling phi.
  """
  f_mean, y_mean = jnp.mean(feats, axis=0), jnp.mean(y)
  fc, yc = feats - f_mean, y - y_mean
  n, m = feats.shape
  gram = fc.T @ fc
  lam = (lam_rel * jnp.trace(gram) / m if relative else lam_rel * n) + 1e-12
  if m <= n:
    w = jnp.linalg.solve(gram + lam * jnp.eye(m, dtype=feats.dtype), fc.T @ yc)
  else:
    w = fc.T @ jnp.linalg.solve(fc @ fc.T + lam * jnp.eye(n, dtype=feats.dtype), yc)
  return {"w": w, "b": y_mean - f_mean @ w}


def meta_target_loss_regression(icfg: inner.InnerConfig, phi, x_tr, y_tr, x_val, y_val,
                                relative: bool = True):
  """L_meta,t(phi) = MSE on D_t^val of the ridge head fitted on D_t^tr (cf. inner.meta_target_loss)."""
  head = fit_head_ridge_regression(features(phi, x_tr), y_tr, icfg.ridge_lambda, relative)
  if icfg.first_order:
    head = jax.lax.stop_gradient(head)
  return mse(predict(phi, head, x_val), y_val)


def energy_fraction(phi, basis):
  """|phi basis|_F^2 / |phi|_F^2 in [0, 1]; basis: a unit vector [d] or orthonormal [d, k]."""
  return jnp.sum((phi @ basis) ** 2) / jnp.sum(phi ** 2)


def best_unit_cos2(phi, direction):
  """max_j cos^2(phi_j, direction): does some unit compute the feature (direction . x)^2?"""
  return jnp.max((phi @ direction) ** 2 / (jnp.sum(phi ** 2, axis=1) + 1e-30))


def l2(tree):
  return sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- methods

def init_params(cfg: TheoryConfig, key):
  k_phi, k_s, k_t = jax.random.split(key, 3)
  head = lambda k: {"w": jax.random.normal(k, (cfg.width,)) / jnp.sqrt(cfg.width),
                    "b": jnp.zeros(())}
  phi = cfg.init_scale * jax.random.normal(k_phi, (cfg.width, cfg.d)) / jnp.sqrt(cfg.d)
  return {"phi": phi, "head_s": head(k_s), "head_t": head(k_t)}


def _penalty(params, with_target_head: bool):
  p = l2(params["phi"]) + l2(params["head_s"]["w"])
  if with_target_head:
    p = p + l2(params["head_t"]["w"])
  return 0.5 * p


def make_loss(cfg: TheoryConfig, method: str):
  icfg = inner.InnerConfig(kind="ridge", ridge_lambda=cfg.ridge_lambda)
  n_val = cfg.n_target - cfg.inner_train

  def loss_fn(params, data, key):
    phi = params["phi"]
    l_s = mse(predict(phi, params["head_s"], data["x_s"]), data["y_s"])
    if method == "pretrain":
      return l_s + cfg.weight_decay * _penalty(params, False)
    if method == "joint":
      l_t = mse(predict(phi, params["head_t"], data["x_t"]), data["y_t"])
      return ((1 - cfg.alpha) * l_s + cfg.alpha * l_t
              + cfg.weight_decay * _penalty(params, True))
    if method == "merlin":
      tr, va = inner.resample_target_split(key, cfg.n_target, cfg.inner_train, n_val)
      l_meta = meta_target_loss_regression(icfg, phi, data["x_t"][tr], data["y_t"][tr],
                                           data["x_t"][va], data["y_t"][va], cfg.ridge_relative)
      return l_s + cfg.rho * l_meta + cfg.weight_decay * _penalty(params, False)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")

  return loss_fn


REFIT_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def target_head(cfg: TheoryConfig, method: str, params, data):
  """The method's target predictor head.

  joint: its own jointly trained head_t. pretrain / merlin: a closed-form ridge head refitted
  on all of D_t, its relative lambda chosen from REFIT_LAMBDAS on the held-out target split
  (x_h, y_h) -- never on the test set.
  """
  if method == "joint":
    return params["head_t"]
  phi = params["phi"]
  f_t = features(phi, data["x_t"])
  heads = [fit_head_ridge_regression(f_t, data["y_t"], lam) for lam in REFIT_LAMBDAS]
  errs = jnp.stack([mse(predict(phi, h, data["x_h"]), data["y_h"]) for h in heads])
  best = jnp.argmin(errs)
  return jax.tree.map(lambda *xs: jnp.stack(xs)[best], *heads)


def evaluate(cfg, method, params, data):
  phi = params["phi"]
  head = target_head(cfg, method, params, data)
  return {
      "test_mse": mse(predict(phi, head, data["x_te"]), data["y_te"]),
      "holdout_mse": mse(predict(phi, head, data["x_h"]), data["y_h"]),
      "target_train_mse": mse(predict(phi, head, data["x_t"]), data["y_t"]),
      "source_mse": mse(predict(phi, params["head_s"], data["x_s"]), data["y_s"]),
      "align_u": energy_fraction(phi, data["u"]),
      "align_v": energy_fraction(phi, data["v"]),
      "best_u": best_unit_cos2(phi, data["u"]),
  }


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train(cfg: TheoryConfig, method: str, data, key):
  loss_fn = make_loss(cfg, method)
  lr = optax.cosine_decay_schedule(cfg.lr, cfg.steps) if cfg.cosine else cfg.lr
  opt = optax.adam(lr)
  k_init, k_run = jax.random.split(key)
  params = init_params(cfg, k_init)
  state = opt.init(params)

  def step(carry, k):
    params, state = carry
    g = jax.grad(loss_fn)(params, data, k)
    updates, state = opt.update(g, state, params)
    return (optax.apply_updates(params, updates), state), None

  def chunk(carry, k):
    carry, _ = jax.lax.scan(step, carry, jax.random.split(k, cfg.eval_every))
    return carry, evaluate(cfg, method, carry[0], data)

  n_evals = cfg.steps // cfg.eval_every
  first = evaluate(cfg, method, params, data)
  (params, _), hist = jax.lax.scan(chunk, (params, state), jax.random.split(k_run, n_evals))
  hist = jax.tree.map(lambda a, h: jnp.concatenate([a[None], h]), first, hist)
  return params, hist


def run(cfg: TheoryConfig, method: str, seed: int):
  """Train one method on one seed. Returns (params, history dict of [n_evals + 1] arrays)."""
  data = make_data(cfg, seed)
  params, hist = _train(cfg, method, data, jax.random.PRNGKey(1000 + seed))
  return params, {k: np.asarray(v) for k, v in hist.items()}


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
  return fit_head_ridge_regression(feats, y, wd / (2 * weight), relative=False)


def best_heads(cfg: TheoryConfig, method: str, phi, data):
  """The heads minimising `method`'s objective at a fixed phi (each term is a ridge problem in its
  head). MeRLin's target head is its inner ridge solve, so head_t is unused there (zeros)."""
  w_src = 1 - cfg.alpha if method == "joint" else 1.0
  head_s = ridge_head(features(phi, data["x_s"]), data["y_s"], w_src, cfg.weight_decay)
  if method == "joint":
    head_t = ridge_head(features(phi, data["x_t"]), data["y_t"], cfg.alpha, cfg.weight_decay)
  else:
    head_t = {"w": jnp.zeros(cfg.width), "b": jnp.zeros(())}
  return {"phi": phi, "head_s": head_s, "head_t": head_t}


def method_objective(cfg: TheoryConfig, method: str, params, data, n_splits: int = 100):
  """The method's training objective (incl. weight decay); MeRLin's averaged over random splits."""
  loss_fn = make_loss(cfg, method)
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
  row = {"method": method, "trained": (float(method_objective(cfg, method, trained, data)),
                                       float(evaluate(cfg, method, trained, data)["test_mse"]))}
  for which in ("u", "V"):
    params, t, obj = best_scaled_solution(cfg, method, data, which)
    row[which] = (obj, float(evaluate(cfg, method, params, data)["test_mse"]))
    row["scale_" + which] = t
  return row


def objective_check(cfg: TheoryConfig, trained):
  """Per seed and method: the method's objective and target test MSE at its trained params
  (`trained`: {method: [params per seed]}, from run_all) and at the hand-built u and V
  solutions. Tells an optimisation failure (u scores lower but is not found) from an
  objective that prefers something else."""
  rows = []
  for seed in range(len(next(iter(trained.values())))):
    data = make_data(cfg, seed)
    for method, params in trained.items():
      rows.append({"seed": seed, **objective_row(cfg, method, data, params[seed])})
  return rows


OBJECTIVES = {"pretrain": "pre-training: L_s + wd", "joint": "joint: (1-α) L_s + α L_t + wd",
              "merlin": "MeRLin: L_s + ρ L_meta + wd"}


def objective_table(rows) -> str:
  out = ["| seed | objective | at trained params | at u-solution (scale t) | at V-solution (scale t) "
         "| lowest | test MSE: trained | u-solution | V-solution |",
         "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lowest = min(("trained", "u", "V"), key=lambda k: r[k][0])
    out.append(f"| {r['seed']} | {OBJECTIVES[r['method']]} | {r['trained'][0]:.4f} "
               f"| {r['u'][0]:.4f} ({r['scale_u']:.2f}) | {r['V'][0]:.4f} ({r['scale_V']:.2f}) "
               f"| {lowest} | {r['trained'][1]:.3f} | {r['u'][1]:.3f} | {r['V'][1]:.3f} |")
  return "\n".join(out)


# ----------------------------------------------------------------------------- main

VARIANTS = {
    "main": {},
    "no_weight_decay": {"weight_decay": 0.0},
    "previous_design": PREVIOUS_DESIGN,
}
SUMMARY_KEYS = ("test_mse", "target_train_mse", "source_mse", "best_u", "align_u", "align_v")


def run_all(cfg: TheoryConfig, seeds: int):
  """({method: {metric: [seeds, n_evals + 1]}}, {method: [final params per seed]})."""
  out, trained = {}, {}
  for method in METHODS:
    params, hists = zip(*(run(cfg, method, seed) for seed in range(seeds)))
    out[method] = {k: np.stack([h[k] for h in hists]) for k in hists[0]}
    trained[method] = list(params)
  return out, trained


def _fmt(a):
  return f"{np.mean(a):.3f} ± {np.std(a):.3f}"


def table(results) -> str:
  rows = ["| method | target test MSE | target train MSE | source MSE | max_j cos²(φ_j, u) "
          "| energy in u | energy in V |", "|---|---|---|---|---|---|---|"]
  for method, h in results.items():
    cells = [_fmt(h[k][:, -1]) for k in SUMMARY_KEYS]
    rows.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def per_seed_table(results) -> str:
  methods = list(results)
  n = results[methods[0]]["test_mse"].shape[0]
  out = ["| seed | " + " | ".join(f"{LABELS[m]} test MSE / best-unit cos²" for m in methods) + " |",
         "|---|" + "---|" * len(methods)]
  for s in range(n):
    out.append(f"| {s} | " + " | ".join(f"{results[m]['test_mse'][s, -1]:.3f} / {results[m]['best_u'][s, -1]:.2f}"
                                      for m in methods) + " |")
  return "\n".join(out)


def plot(results, cfg: TheoryConfig, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps = np.arange(cfg.steps // cfg.eval_every + 1) * cfg.eval_every
  panels = [("test_mse", "target test MSE (noiseless y)"),
            ("best_u", "max_j cos²(φ_j, u)  (transferable)"),
            ("align_v", "|φ P_V|²_F / |φ|²_F  (source-specific)")]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, (key, title) in zip(axes, panels):
    for method, h in results.items():
      mean, std = h[key].mean(0), h[key].std(0)
      ax.plot(steps, mean, label=LABELS[method])
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("outer step")
  axes[0].axhline(2.0, color="gray", ls=":", lw=1, label="Var(y) = 2 (predict the mean)")
  axes[0].set_ylim(0, 4)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"quadratic-net simulation (our design): d={cfg.d}, k={cfg.k}, n_t={cfg.n_target}, "
               f"m={cfg.width}, wd={cfg.weight_decay}; mean ± std over seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


DESIGN_MD = """\
## Design (ours, not the paper's)

The paper's theorem (quadratic network; source with transferable and source-specific features)
is not available here, so this simulation and every setting below are our choices.

* Representation: `h_phi(x) = ((phi_j . x)^2)_{j<m}`, `phi in R^{m x d}` (m = 48); heads are linear
  (+ bias) on these features. Source head `theta_s`; target head `theta_t`.
* Directions: a random unit vector `u` (transferable) and an orthonormal basis `V` of a
  `k`-dim subspace orthogonal to `u` (source-specific "signature"), drawn per seed.
* Target: `x ~ N(0, I_d)`, `y = (u . x)^2 + 0.01 eps`; `n_t = 20 < k = 24 < d = 40` labelled examples
  (D_t), a separate target hold-out set of 30 (used only to pick the refit ridge lambda), and 2000
  test points scored against the noiseless `(u . x)^2` (`Var(y) = 2`: MSE 2 = predicting the mean).
  The signature coordinates `P_V x` are pure noise here.
* Source (n_s = 1000): `x = z` with its V-part replaced by `sqrt(c) |u . z| xi`, `xi` uniform on
  the unit sphere of V, so `|P_V x|^2 = c (u . x)^2` and `y = (u . x)^2 = |P_V x|^2 / c`
  exactly: the label is explained by u **and** by V (a rank-k quadratic form). Weight decay on
  (phi, theta_s) acts like a Schatten-2/3 quasi-norm of the quadratic form (one unit carrying
  amplitude a costs ~ a^(2/3)): V costs k c^(-2/3), u costs 1, so with c = 140 > k^1.5 = 118 the V
  solution is the cheaper one for the source alone (0.89 vs 1), and gradient descent also grows V
  first (the source signal is c/k times stronger along V). The V solution needs k units; in the
  target those k units are k independent noise features, enough for a linear head to interpolate
  n_t <= k points (memorisation, as with the paper's CIFAR "signature" half-images).
* Methods, all full-batch Adam (optax, lr 1e-2 cosine-decayed to 0 over 4000 steps), explicit weight
  decay `wd/2 |.|^2` (wd = 0.01) on phi and the heads trained by gradient, init phi_j ~ N(0, I/d):
  * pre-training: `L_s(theta_s, phi)` + wd; then a closed-form ridge head is refitted on all of D_t.
  * joint training: `(1-alpha) L_s + alpha L_t(theta_t, phi)` + wd, alpha = 0.5 fixed; scored with its own `theta_t`.
  * MeRLin: `L_s + rho L_meta,t(phi)` + wd, rho = 1 fixed. `L_meta,t`: a fresh random split of D_t
    (14 / 6) each step (`inner.resample_target_split`), a closed-form ridge head on the D_t^tr
    features with an ABSOLUTE lambda (0.01 n: a feature must have scale to be used, and scale costs
    weight decay; with a lambda relative to the features' scale a target-only unit of phi is free),
    differentiable through `jnp.linalg.solve`, MSE on D_t^val. The ridge is implemented in
    `theory.py` because `inner.fit_head_ridge` only fits one-hot class targets; it is the same
    centred primal/dual solve for a real-valued target. Scored with a ridge head refitted on all of D_t.
* Hyper-parameters: alpha and rho are fixed at principled values (equal weight / rho = 1), not tuned.
  The refit ridge lambda (pre-training, MeRLin) is chosen per evaluation from
  {1e-3, 1e-2, 0.1, 1, 10} (relative to the mean feature variance) on the target hold-out set.
  Nothing is selected on target test error. The other settings (c, wd, absolute inner lambda, label
  noise 0.01, init scale, cosine schedule, m = 48) were picked by us in exploration on seed 0 (mostly
  looking at MeRLin; see the variants table) -- they favour the demonstration, not a neutral choice.
* Metrics: target test MSE; `max_j cos^2(phi_j, u)` (does some unit compute the transferable
  feature?); the fraction of phi's energy in V, `|phi P_V|_F^2 / |phi|_F^2`, and in u.
* Objective check, for each method's own regularised training objective (pre-training:
  `L_s` + wd; joint: `(1-alpha) L_s + alpha L_t` + wd including the target head; MeRLin: `L_s + rho
  L_meta,t` + wd, averaged over 100 random splits): its value at the method's trained parameters and
  at two hand-built solutions, one unit along u and k units spanning V. Each hand-built phi is
  multiplied by the common scale t (grid 0.1-30, relative to the source-only weight-decay optimum)
  that minimises the objective, with the heads at their closed-form optimum for that objective and
  phi (ridge solves, `best_heads`): for joint training at the V solution this is the target head
  minimising `alpha L_t + wd/2 |theta_t|^2`, which (partly) memorises D_t through the k V-features.
  MeRLin's inner head is closed-form, so these are complete parameter sets for every method. This
  compares candidate points, not global minimisers: it can show that an objective scores u below
  what gradient descent found, not that u is its minimiser.
"""


FINDINGS_MD = """\
## What we found (read with the tables above)

**At the level of each method's regularised objective, pre-training prefers the source-specific V
and MeRLin prefers the transferable u, as the paper says; but joint training's objective ALSO
scores u far below V-plus-memorisation, so in this design joint training's failure, like MeRLin's
shortfall, is one of optimisation. As trained, MeRLin has the lowest mean test error but does not
recover the target ground truth, and the ordering is not robust over seeds.**

* Pre-training behaves as the paper says: phi ends mostly in the source-specific subspace V (energy
  in V ~ 0.75-0.85, no unit aligned with u), and a head refitted on D_t does no better than
  predicting the mean (test MSE >= Var(y) = 2).
* Joint training behaves as the paper says, too: it keeps most of phi in V and drives the target
  *train* error to ~0 (memorisation) while its target test error is above 2.
* MeRLin: lowest mean target test error and highest u-alignment of the three, but its best unit
  only partly aligns with u (cos^2 0.2-0.6), its test error is far from the ~0 of the u solution,
  and on one of the three seeds pre-training's refit is as good (see the per-seed check below).
* Objective check (table above; lower is better within a row):
  * pre-training: the V solution is lower than the u solution on every seed (0.0084 vs 0.0095: the
    source fit is exact for both, so this is the weight-decay cost k (2/c^2)^(1/3) * 1.5 vs
    1.5 * 2^(1/3), 11% lower for V because c > k^1.5). Its objective's preference is the paper's.
    Its trained parameters score 1.8-3.6x higher than the V solution (they are a mixture,
    ~0.77 of phi's energy in V), so gradient descent does not reach V exactly either.
  * joint training: the u solution (with its best target head, test MSE 0) scores 0.012 on every
    seed; the V solution with the best memorising target head scores 0.12-0.18 (10-15x higher):
    memorising D_t through k features of scale ~c^(-2/3) needs a target head whose weight decay
    costs far more than one shared u unit. Joint training's trained parameters (which do memorise
    D_t) score 0.016-0.022, also above the u solution on every seed. So **in this design joint
    training's objective does not prefer memorisation over u; that it memorises is an
    optimisation phenomenon**, not the objective-level failure the paper's theorem describes (we
    did not search for other memorising solutions beyond the trained ones; one cheaper than u may
    exist, but gradient descent did not find it).
  * MeRLin: on every seed its objective is 2.3-3.6x LOWER at the hand-built u solution (test MSE
    ~0) than at the phi gradient descent found, and >100x lower than at the V solution. Started
    at the u solution, MeRLin's gradient steps keep it there (we checked this on seed 0 with a
    constant lr for 2000 steps). So the failure is one of optimisation: from a random init the
    source gradient grows V first (c/k = 5.8 times stronger than along u), and the meta-loss then
    fits D_t with a mixture of units (parts of V, u and D_t-specific directions) -- a local
    optimum from which the single shared u unit is not reached within our budget (longer runs,
    larger rho, other init scales and widths did not get there either; table below).
  * So the minimiser-level separation this design supports is pre-training (V) vs joint and
    MeRLin (both u); what separates joint training from MeRLin here is what gradient descent
    finds (joint: 0 train error, test > 2; MeRLin: lower mean test error, partial u-alignment),
    not which objective prefers u.
* With the inner ridge lambda relative to the features' scale (the previous design, third table)
  the objective itself does not prefer u strongly: a target-only unit costs nothing there, and
  with n_t < d the projection Pu of u onto span(D_t) (cos^2 ~ n_t/d) interpolates D_t with less
  norm than u, so phi can memorise D_t cheaply through a tiny extra unit.
* Without weight decay (second table) nothing but the inner ridge penalises a memoriser; the
  picture is about the same (MeRLin lowest mean test error, ~2, no unit aligned with u).

Variants we tried during exploration (seed 0 unless said; numbers as we observed them; "bu" =
max_j cos^2(phi_j, u); rows marked * refitted the ridge with a fixed relative lambda 1e-2 instead
of the hold-out choice, which inflates the pre-training error; rows marked + are the current
session, starting from the previous design: d=40, k=24, n_t=20, relative lambda, noise 0.1):

| variant | pre-train test / bu | joint test / bu | MeRLin test / bu |
|---|---|---|---|
| * 1-dim v, v.x = 2 u.x (the issue's suggestion), d=50, n_t=30, m=8; energy in u instead of bu | 1.87 / 0.20 | 2.05 / 0.14 | 2.21 / 0.08 (train MSE 0: phi memorised D_t) |
| * same, absolute inner ridge lambda 0.1 (spare units must pay weight decay to matter), wd 1e-2 | 1.84 / 0.20 | 2.16 / 0.30 | 1.82 / 0.46 |
| same as the first row, m=1 (no spare unit) | 1.84 / 0.21 | **0.003 / 1.00** | 1.77 / 0.39 |
| * V-signature, d=20, k=15, n_t=40 (n_t > d), m=64 | 4.40 / 0.18 | **0.48 / 0.89** | 0.60 / 0.92 |
| * same, n_t=60 | 2.94 / 0.18 | **0.02 / 1.00** | 0.19 / 0.98 |
| + previous design, m = k = 24 (no spare unit) | 2.47 / 0.11 | 1.98 / 0.29 | 1.53 / 0.47 |
| + m = 24, absolute lambda 0.1 / 0.1 + rho 5 / relative + rho 5 | - | - | 1.92 / 0.46, 1.94 / 0.39, 1.63 / 0.46 |
| + m = 24, c = 140, wd 1e-2, absolute lambda 0.1 / 1.0 / relative | 2.49 / 0.02 | - | 1.96 / 0.24, 1.89 / 0.42, 1.51 / 0.48 |
| + same (absolute 0.1), cosine lr over 4000 steps, noise 0.1 / 0.01 | - | - | 1.83 / 0.36, 1.86 / 0.30 |
| + m = 24, absolute 0.01, noise 0.01, cosine 4000: init 1.0 / rho 10 / init 1.0 + rho 10 + lr 3e-3 | - | - | 1.46 / 0.58, 1.84 / 0.30, 1.94 / 0.32 |
| + same, init 3.0 (m = 24 / 48), init 1.0 with m = 48 (= the current main design) | - | - | 2.29 / 0.29, 1.38 / 0.52, **1.31 / 0.57** |
| + d=24, k=20, m=20, n_t=18, c=110, wd 1e-2, cosine 4000, noise 0.01, relative / absolute 0.1 | 2.18 / 0.05 | 1.72 / 0.48 | 1.59 / 0.48, 1.90 / 0.46 |
| + d=16, k=10, c=40, n_t=30 > d, m=40 (head memorises through a V frame), relative / absolute 0.01 | 2.43 / 0.10 | **0.79 / 0.87** | 0.83 / 0.84, 1.05 / 0.91 |
| + main design with k=32, n_t=30, c=200 (n_t/d = 0.75), seeds 0 / 1 | 1.78 / 2.11 | 1.91 / 2.38 | 1.77 / 2.31 |

So, in our simulations: when the representation cannot memorise D_t (m = 1) or when D_t is large
enough to identify u (n_t > d), joint training already recovers u and is at least as good as
MeRLin; when D_t is memorisable (n_t < d), joint training fails as the paper says, and MeRLin's
objective (with an absolute inner ridge lambda and weight decay) prefers u, but gradient descent
from a random init does not find it. We did not find a setting of this family in which MeRLin
*as trained* recovers u. The paper's theorem is about the objectives' minimisers: our check agrees
with it for pre-training and MeRLin, but in this design joint training's objective also scores u
below both the V-plus-memorisation solution and its own trained (memorising) parameters.

The fast test (`tests/test_theory.py`, main config, seed 0) asserts the ordering and the objective
check for all three methods; on seed 0 the test-MSE ordering holds with a wide margin (MeRLin 1.31,
joint 2.31, pre-training 2.71), on seed 1 MeRLin beats joint but not pre-training, on seed 2 it
beats both. The objective-check orderings (pre-training: V < u; joint: u < trained, V; MeRLin:
u < trained < V) held on all 3 seeds.
"""


def write_doc(path, args, base, results, checks, runtime):
  with open(path, "w") as f:
    f.write("# MeRLin theory simulation: quadratic network, transferable vs source-specific features\n\n")
    f.write(f"Command: `python -m merlin_jax.experiments.theory --seeds={args.seeds} --out={args.out}`  \n")
    f.write(f"Runtime: {runtime:.0f} s on a 2-core CPU (shared), jax {jax.__version__}, "
            f"float32; {args.seeds} seeds (0..{args.seeds - 1}).  \n")
    f.write("Plot: `docs/theory.png` (main variant; mean ± std bands over seeds).\n\n")
    f.write(DESIGN_MD + "\n")
    f.write(f"Config (main variant): `{base}`\n\n")
    f.write("## Results (final step, mean ± std over seeds)\n\n")
    for name, res in results.items():
      f.write(f"### {name} {VARIANTS[name] or ''}\n\n{table(res)}\n\n")
    f.write("## Per seed (main variant, final step)\n\n" + per_seed_table(results["main"]) + "\n\n")
    f.write("## Objective check (main variant; each method's own objective; lower is better)\n\n" + objective_table(checks) + "\n\n")
    f.write(FINDINGS_MD)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", default="docs/")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  base = TheoryConfig()
  t0 = time.time()
  results, trained = {}, {}
  for name, overrides in VARIANTS.items():
    cfg = dataclasses.replace(base, **overrides)
    results[name], trained[name] = run_all(cfg, args.seeds)
    print(f"[{name}] {time.time() - t0:.0f}s\n" + table(results[name]), flush=True)
  checks = objective_check(base, trained["main"])  # the main variant's runs, not retrained
  print(objective_table(checks), flush=True)
  runtime = time.time() - t0
  plot(results["main"], base, os.path.join(args.out, "theory.png"))
  write_doc(os.path.join(args.out, "theory.md"), args, base, results, checks, runtime)
  print(f"total {runtime:.0f}s")


if __name__ == "__main__":
  main()
