"""The theory simulation's data, quadratic network, methods and training loop.

See the package docstring for the design in one page and docs/theory.md for the long version.
"""

from __future__ import annotations

import dataclasses
import functools

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
# the variants the program runs: name -> overrides of TheoryConfig()
VARIANTS = {
    "main": {},
    "no_weight_decay": {"weight_decay": 0.0},
    "previous_design": PREVIOUS_DESIGN,
}


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


def fit_head_ridge_regression(feats, y, lam: float, relative: bool = True):
  """argmin_{w,b} |F w + b - y|^2 + lam' |w|^2 for a real-valued y (inner.ridge_solve).

  lam' = lam * the mean diagonal of the centred F^T F (relative: the head is invariant to
  rescaling phi) or lam * n (absolute), plus 1e-12 so that lam = 0 stays solvable.
  """
  lam = lam if relative else lam * feats.shape[0]
  w, b = inner.ridge_solve(feats, y, lam, relative=relative, eps=1e-12)
  return {"w": w, "b": b}


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
  """`method`'s training objective loss_fn(params, data, key), weight decay included."""
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
  """Final-step metrics of `method` at `params` (test error of its target head, alignments)."""
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


def run_all(cfg: TheoryConfig, seeds: int):
  """({method: {metric: [seeds, n_evals + 1]}}, {method: [final params per seed]})."""
  out, trained = {}, {}
  for method in METHODS:
    params, hists = zip(*(run(cfg, method, seed) for seed in range(seeds)))
    out[method] = {k: np.stack([h[k] for h in hists]) for k in hists[0]}
    trained[method] = list(params)
  return out, trained
