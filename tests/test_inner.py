"""The inner solver (merlin_jax/inner.py): meta-gradients, solutions, splits, config checks.

Gradient checks run in float64 on a tiny problem: phi is a [d_in, d] matrix and the
features are tanh(x @ phi), so L_meta,t(phi) is a smooth function of 12-20 numbers that
an explicit Python loop and central finite differences can both evaluate.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.optimize

from merlin_jax import inner
from merlin_jax.config_base import base_config
from tests.helpers import x64
from merlin_jax.errors import ConfigError
from merlin_jax.models.heads import apply_head, init_head

D_IN, D, K = 3, 4, 3
N_TR, N_VAL = 9, 7


def _data(seed=0, n_tr=N_TR, n_val=N_VAL, d_in=D_IN, d=D, k=K):
  rng = np.random.default_rng(seed)
  return dict(
      phi=rng.normal(size=(d_in, d)),
      x_tr=rng.normal(size=(n_tr, d_in)),
      y_tr=np.arange(n_tr) % k,          # every class present
      x_val=rng.normal(size=(n_val, d_in)),
      y_val=rng.integers(0, k, size=n_val),
  )


def _np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _np_ce(logits, y):
  z = logits - logits.max(axis=-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  return -np.mean(logp[np.arange(len(y)), y])


# ---------------------------------------------------------------------------------------
# gd: the meta-gradient through n inner steps.


def _meta_loss_library(cfg, phi, d, key):
  f_tr, f_val = jnp.tanh(d["x_tr"] @ phi), jnp.tanh(d["x_val"] @ phi)
  loss, _ = inner.meta_target_loss(cfg, f_tr, d["y_tr"], f_val, d["y_val"], K, key)
  return loss


def _meta_loss_python_loop(cfg, phi, d, key):
  """Algorithm 1, l. 4-9 written out: an unrolled Python loop with the cross-entropy
  gradient in closed form, (softmax - onehot) / N, no library code but the head init."""
  f_tr, f_val = jnp.tanh(d["x_tr"] @ phi), jnp.tanh(d["x_val"] @ phi)
  onehot = jax.nn.one_hot(d["y_tr"], K, dtype=f_tr.dtype)
  head = init_head(key, D, K, cfg.init, f_tr.dtype)
  w, b = head["w"], head["b"]
  lr = cfg.lr
  if cfg.step_size == "normalized":   # eta / L_hat, L_hat = (mean ||f||^2 + 1) / 2 + wd
    lr = lr / (0.5 * (jnp.mean(jnp.sum(f_tr ** 2, axis=1)) + 1.0) + cfg.weight_decay)
  for _ in range(cfg.steps):
    dlogits = (jax.nn.softmax(f_tr @ w + b) - onehot) / f_tr.shape[0]
    gw = f_tr.T @ dlogits + cfg.weight_decay * w
    gb = jnp.sum(dlogits, axis=0)
    w, b = w - lr * gw, b - lr * gb
  logits = f_val @ w + b
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(logp[jnp.arange(f_val.shape[0]), d["y_val"]])


@pytest.mark.parametrize("form", ["primal", "dual"])
@pytest.mark.parametrize("init,weight_decay,remat,steps,step_size", [
    ("zeros", 0.0, True, 7, "fixed"),
    ("random", 0.05, False, 6, "normalized"),
])
def test_gd_meta_gradient_matches_unrolled_loop_and_finite_differences(
    float64, init, weight_decay, remat, steps, step_size, form):
  d = _data()
  cfg = inner.InnerConfig(kind="gd", steps=steps, lr=0.7, init=init, gd_form=form,
                          weight_decay=weight_decay, remat=remat, step_size=step_size)
  key = jax.random.key(3)
  phi = jnp.asarray(d["phi"])
  assert phi.dtype == jnp.float64

  lib = jax.jit(jax.value_and_grad(lambda p: _meta_loss_library(cfg, p, d, key)))
  ref = jax.jit(jax.value_and_grad(lambda p: _meta_loss_python_loop(cfg, p, d, key)))
  (v_lib, g_lib), (v_ref, g_ref) = lib(phi), ref(phi)
  np.testing.assert_allclose(v_lib, v_ref, rtol=1e-12)
  g_lib, g_ref = np.asarray(g_lib), np.asarray(g_ref)
  assert g_lib.dtype == np.float64
  assert np.abs(g_lib).max() > 1e-3          # a real signal, not a vanishing gradient
  np.testing.assert_allclose(g_lib, g_ref, rtol=1e-10, atol=1e-13)

  g_fd = _central_differences(lambda p: lib(p)[0], phi)
  np.testing.assert_allclose(g_lib, g_fd, rtol=1e-6, atol=1e-9)


def _central_differences(loss, phi, eps=1e-6):
  """d loss / d phi by central differences, entry by entry (float64)."""
  g = np.zeros(phi.shape)
  for idx in itertools.product(*map(range, phi.shape)):
    e = np.zeros(phi.shape)
    e[idx] = eps
    g[idx] = (float(loss(phi + e)) - float(loss(phi - e))) / (2 * eps)
  return g


def test_gd_zero_steps_returns_initial_head(float64):
  d = _data()
  f_tr, f_val = np.tanh(d["x_tr"] @ d["phi"]), np.tanh(d["x_val"] @ d["phi"])
  cfg = inner.InnerConfig(kind="gd", steps=0)
  loss, metrics = inner.meta_target_loss(cfg, f_tr, d["y_tr"], f_val, d["y_val"], K, None)
  np.testing.assert_allclose(loss, np.log(K), rtol=1e-12)       # zero head: uniform
  np.testing.assert_allclose(metrics["meta_train_loss"], np.log(K), rtol=1e-12)


def _np_head_objective(theta, f, y, wd, k):
  """Inner objective and gradient in numpy (for scipy's L-BFGS)."""
  dim = f.shape[1]
  w, b = theta[:dim * k].reshape(dim, k), theta[dim * k:]
  logits = f @ w + b
  p = _np_softmax(logits)
  onehot = np.eye(k)[y]
  loss = _np_ce(logits, y) + 0.5 * wd * np.sum(w * w)
  dlogits = (p - onehot) / len(y)
  gw = f.T @ dlogits + wd * w
  gb = dlogits.sum(axis=0)
  return loss, np.concatenate([gw.ravel(), gb])


def test_gd_many_steps_approaches_the_regularised_argmin(float64):
  d = _data(seed=1, n_tr=12)
  f = np.tanh(d["x_tr"] @ d["phi"])
  y = d["y_tr"]
  wd = 0.1
  head, traj = inner.fit_head_gd(jnp.asarray(f), jnp.asarray(y),
                                 init_head(None, D, K, "zeros", jnp.float64),
                                 steps=3000, lr=0.5, weight_decay=wd, remat=False,
                                 return_trajectory=True)
  traj = np.asarray(traj)
  assert traj.shape == (3000,)
  assert np.all(np.diff(traj) <= 1e-12)       # lr < 2/L: monotone descent
  assert traj[-1] < traj[0] - 0.01

  res = scipy.optimize.minimize(_np_head_objective, np.zeros(D * K + K), args=(f, y, wd, K),
                                jac=True, method="L-BFGS-B",
                                options=dict(gtol=1e-13, ftol=1e-15, maxiter=10_000))
  w_star, b_star = res.x[:D * K].reshape(D, K), res.x[D * K:]
  # The bias is unpenalised and the softmax ignores a common shift of it: compare the
  # weights and the centred bias (gd from zeros keeps sum(b) = 0).
  np.testing.assert_allclose(np.asarray(head["w"]), w_star, atol=1e-6)
  np.testing.assert_allclose(np.asarray(head["b"]), b_star - b_star.mean(), atol=1e-6)
  np.testing.assert_allclose(traj[-1], res.fun, atol=1e-10)
  # Few steps are measurably away from it: the comparison above has teeth.
  head_few = inner.fit_head_gd(jnp.asarray(f), jnp.asarray(y),
                               init_head(None, D, K, "zeros", jnp.float64),
                               steps=10, lr=0.5, weight_decay=wd)
  assert np.abs(np.asarray(head_few["w"]) - w_star).max() > 1e-2


def test_curvature_bound_bounds_the_head_loss_hessian(float64):
  rng = np.random.default_rng(5)
  f = jnp.asarray(3.0 * rng.normal(size=(10, D)))
  y = jnp.asarray(np.arange(10) % K)
  wd = 0.2
  bound = float(inner.curvature_bound(f, wd))

  def loss_flat(theta):
    return inner.head_train_loss({"w": theta[:D * K].reshape(D, K), "b": theta[D * K:]}, f, y,
                                 wd)

  hessian = jax.jit(jax.hessian(loss_flat))
  top = []
  for scale in (0.0, 0.3, 3.0):                 # near-uniform to confident predictions
    theta = jnp.asarray(scale * rng.normal(size=D * K + K))
    top.append(np.linalg.eigvalsh(np.asarray(hessian(theta))).max())
  assert max(top) <= bound * (1 + 1e-12)
  assert max(top) > 0.1 * bound                  # and not a uselessly loose bound


def test_normalized_step_is_stable_where_the_fixed_step_diverges(float64):
  rng = np.random.default_rng(6)
  f = jnp.asarray(20.0 * rng.normal(size=(12, D)))   # large features: L ~ 200 * D
  y = jnp.asarray(np.arange(12) % K)
  head0 = init_head(None, D, K, "zeros", jnp.float64)
  _, traj_norm = inner.fit_head_gd(f, y, head0, 30, 1.0, remat=False, return_trajectory=True,
                                   step_size="normalized")
  _, traj_fixed = inner.fit_head_gd(f, y, head0, 30, 1.0, remat=False, return_trajectory=True,
                                    step_size="fixed")
  assert np.all(np.diff(np.asarray(traj_norm)) <= 1e-12)
  assert np.asarray(traj_fixed).max() > 10 * np.log(K)   # plain eta = 1 overshoots


# ---------------------------------------------------------------------------------------
# ridge: closed form, both branches, gradient.


def _np_ridge(x, labels, k, lam, scale):
  """Normal equations of ||[X 1][W; b] - Y||^2 + lam ||W||^2 (bias unpenalised)."""
  n, dim = x.shape
  a = np.concatenate([x, np.ones((n, 1))], axis=1)
  reg = lam * np.eye(dim + 1)
  reg[dim, dim] = 0.0
  sol = np.linalg.solve(a.T @ a + reg, a.T @ np.eye(k)[labels])
  return scale * sol[:dim], scale * sol[dim]


@pytest.mark.parametrize("n,dim", [(12, 5), (6, 10)], ids=["primal", "dual"])
def test_ridge_matches_numpy_normal_equations(float64, n, dim):
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, dim))
  labels = np.arange(n) % K
  head = inner.fit_head_ridge(jnp.asarray(x), jnp.asarray(labels), K, lam=0.3, scale=2.5)
  w, b = _np_ridge(x, labels, K, 0.3, 2.5)
  assert head["w"].shape == (dim, K) and head["b"].shape == (K,)
  np.testing.assert_allclose(head["w"], w, rtol=1e-9, atol=1e-11)
  np.testing.assert_allclose(head["b"], b, rtol=1e-9, atol=1e-11)


def test_ridge_primal_and_dual_branches_agree(float64):
  # Zero feature columns get zero weight and change nothing else, so padding X from
  # D = N (primal branch) to D > N (dual branch) must leave the solution unchanged.
  rng = np.random.default_rng(7)
  n = 6
  x = rng.normal(size=(n, n))
  labels = np.arange(n) % K
  primal = inner.fit_head_ridge(jnp.asarray(x), jnp.asarray(labels), K, lam=0.5)
  x_pad = np.concatenate([x, np.zeros((n, 3))], axis=1)
  dual = inner.fit_head_ridge(jnp.asarray(x_pad), jnp.asarray(labels), K, lam=0.5)
  np.testing.assert_allclose(dual["w"][:n], primal["w"], rtol=1e-9, atol=1e-11)
  np.testing.assert_allclose(dual["w"][n:], 0.0, atol=1e-12)
  np.testing.assert_allclose(dual["b"], primal["b"], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("n_tr,dim", [(8, 3), (4, 6)], ids=["primal", "dual"])
def test_ridge_meta_gradient_matches_finite_differences(float64, n_tr, dim):
  rng = np.random.default_rng(dim)
  f_tr = rng.normal(size=(n_tr, dim))
  y_tr = np.arange(n_tr) % K
  f_val = rng.normal(size=(5, dim))
  y_val = rng.integers(0, K, size=5)
  cfg = inner.InnerConfig(kind="ridge", ridge_lambda=0.4, ridge_scale=3.0)

  @jax.jit
  def meta(ft, fv):
    return inner.meta_target_loss(cfg, ft, y_tr, fv, y_val, K, None)[0]

  g_tr, g_val = jax.jit(jax.grad(meta, argnums=(0, 1)))(f_tr, f_val)
  assert np.abs(g_tr).max() > 1e-3
  eps = 1e-6
  for g, which in ((g_tr, 0), (g_val, 1)):
    base = [f_tr, f_val]
    g_fd = np.zeros(base[which].shape)
    for idx in itertools.product(*map(range, base[which].shape)):
      e = np.zeros(base[which].shape)
      e[idx] = eps
      plus, minus = list(base), list(base)
      plus[which] = base[which] + e
      minus[which] = base[which] - e
      g_fd[idx] = (float(meta(*plus)) - float(meta(*minus))) / (2 * eps)
    np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-9)


def _fit_head_autodiff_scan(features, labels, head0, steps, lr, weight_decay, remat, step_size):
  """fit_head_gd as it was before the closed-form gradient and the dual form: a scan of
  jax.value_and_grad(head_train_loss) steps (the reference for both forms)."""
  grad_fn = jax.value_and_grad(inner.head_train_loss)
  if step_size == "normalized":
    lr = lr / inner.curvature_bound(features, weight_decay)

  def step(head, _):
    loss, g = grad_fn(head, features, labels, weight_decay)
    return jax.tree.map(lambda p, q: p - lr * q, head, g), loss

  return jax.lax.scan(jax.checkpoint(step) if remat else step, head0, None, length=steps)


@pytest.mark.parametrize("form", ["primal", "dual"])
@pytest.mark.parametrize("n_tr,dim,init,weight_decay,step_size,remat", [
    (9, D, "zeros", 0.0, "fixed", True),         # N > D: 'auto' would run the primal
    (6, 8, "random", 0.1, "normalized", False),  # N < D: 'auto' would run the dual
    (6, 8, "random", 0.0, "fixed", True),
    (6, 8, "random", 0.0, "normalized", False),
    (6, 8, "random", 0.0, "normalized", True),
    (6, 8, "random", 0.1, "fixed", False),       # s = 1 - eta wd != 1
])
def test_gd_forms_match_the_autodiff_scan(float64, form, n_tr, dim, init, weight_decay,
                                          step_size, remat):
  """Both forms: the same head, trajectory and meta-gradient (in the train and the val
  features) as autodiff of the loss inside a scan, to float64 rounding."""
  d = _data(seed=7, n_tr=n_tr, d=dim)
  steps, lr = 12, 0.6
  f_tr, f_val = np.tanh(d["x_tr"] @ d["phi"]), np.tanh(d["x_val"] @ d["phi"])
  head0 = init_head(jax.random.key(5), dim, K, init, jnp.float64)

  def run(fit, ft, fv):
    head, traj = fit(ft, d["y_tr"], head0, steps, lr, weight_decay, remat, step_size)
    logp = jax.nn.log_softmax(apply_head(head, fv))
    return -jnp.mean(logp[jnp.arange(N_VAL), d["y_val"]]), (head, traj)

  ours = lambda ft, y, h0, n, eta, wd, rm, ss: inner.fit_head_gd(
      ft, y, h0, n, eta, wd, rm, return_trajectory=True, step_size=ss, form=form)
  results = []
  for fit in (ours, _fit_head_autodiff_scan):
    fn = jax.jit(jax.value_and_grad(lambda ft, fv, fit=fit: run(fit, ft, fv), argnums=(0, 1),
                                    has_aux=True))
    results.append(fn(jnp.asarray(f_tr), jnp.asarray(f_val)))
  ((v, (head, traj)), grads), ((v_ref, (head_ref, traj_ref)), grads_ref) = results
  np.testing.assert_allclose(v, v_ref, rtol=1e-12)
  np.testing.assert_allclose(traj, traj_ref, rtol=1e-12)
  for key in ("w", "b"):
    np.testing.assert_allclose(head[key], head_ref[key], rtol=1e-10, atol=1e-13)
  for g, g_ref in zip(grads, grads_ref):
    assert np.abs(np.asarray(g_ref)).max() > 1e-3
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-13)
  # Without the trajectory (how MeRLin calls it): the same head and meta-gradient.
  plain = lambda ft, y, h0, n, eta, wd, rm, ss: (inner.fit_head_gd(
      ft, y, h0, n, eta, wd, rm, step_size=ss, form=form), jnp.zeros(n))
  fn = jax.jit(jax.value_and_grad(lambda ft, fv: run(plain, ft, fv), argnums=(0, 1),
                                  has_aux=True))
  (v2, (head2, _)), grads2 = fn(jnp.asarray(f_tr), jnp.asarray(f_val))
  np.testing.assert_allclose(v2, v_ref, rtol=1e-12)
  for g, g_ref in zip(grads2, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("remat", [True, False])
@pytest.mark.parametrize("dim", [256, 32])
def test_the_written_out_dual_loop_in_float32_is_as_close_as_autodiff(remat, dim):
  """The dual loop without weight decay (inner._dual_loop) at MeRLin's scale (100 x 256
  features, n = 200, the step near GD's limit; and 100 x 32, not separable: the residuals
  persist and |A_k| grows with k): its float32 meta-gradient is within 3x the float32
  error of the autodiff'd primal scan, both against float64. With remat it recovers
  A_k = A_{k+1} - R_k going backwards, whose rounding this bounds."""
  rng = np.random.default_rng(3)
  n_tr, steps = 100, 200
  f_tr = np.tanh(rng.normal(size=(n_tr, dim)))
  f_val = np.tanh(rng.normal(size=(n_tr, dim)))
  y = jnp.asarray(rng.integers(0, K, n_tr))
  y_val = jnp.asarray(rng.integers(0, K, n_tr))

  def grads(fit, dtype):
    head0 = {"w": jnp.zeros((dim, K), dtype), "b": jnp.zeros((K,), dtype)}

    def meta(ft, fv):
      head = fit(ft, y, head0)
      return -jnp.mean(jax.nn.log_softmax(apply_head(head, fv))[jnp.arange(n_tr), y_val])
    g = jax.jit(jax.grad(meta, argnums=(0, 1)))(jnp.asarray(f_tr, dtype),
                                                jnp.asarray(f_val, dtype))
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in g])

  ours = lambda ft, y, h0: inner.fit_head_gd(ft, y, h0, steps, 1.9, remat=remat,
                                             step_size="normalized", form="dual")
  autodiff = lambda ft, y, h0: _fit_head_autodiff_scan(ft, y, h0, steps, 1.9, 0.0, remat,
                                                       "normalized")[0]
  with x64():
    ref = grads(ours, jnp.float64)
    np.testing.assert_allclose(grads(autodiff, jnp.float64), ref, rtol=1e-9, atol=1e-14)
  err = lambda g: np.abs(g - ref).max() / np.abs(ref).max()
  ours_err, autodiff_err = err(grads(ours, jnp.float32)), err(grads(autodiff, jnp.float32))
  print(f"TIMING|dual_loop_float32|dim={dim}|remat={remat}|ours={ours_err:.2e}|autodiff={autodiff_err:.2e}")
  assert ours_err < max(3 * autodiff_err, 1e-6), (ours_err, autodiff_err)


def test_gd_form_auto_picks_the_smaller_matmul():
  assert inner.gd_form(100, 256) == "dual"        # MeRLin's split on 256-d features
  assert inner.gd_form(256, 256) == "dual"
  assert inner.gd_form(1000, 256) == "primal"     # e.g. the probe on a large pool
  assert inner.gd_form(100, 256, "primal") == "primal"


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_gd_remat_memory_grows_only_by_the_carry(form):
  """XLA's estimate of the meta-gradient's working memory, at n and n + 200 inner steps:
  with remat the backward pass keeps one carry per step (the head [D, K] + [K] in the
  primal, A [K, N] + b [K] + s^k in the dual) and nothing else, so it grows by at most
  that per step; without remat it keeps more."""
  n_tr, dim, k, extra = 40, 64, 10, 200
  f = jnp.zeros((n_tr, dim), jnp.float32)
  y = jnp.zeros((n_tr,), jnp.int32)

  def temp_bytes(steps, remat):
    cfg = inner.InnerConfig(kind="gd", steps=steps, lr=0.1, step_size="fixed",
                            remat=remat, gd_form=form)
    meta = lambda f: inner.meta_target_loss(cfg, f, y, f, y, k, None)[0]
    return jax.jit(jax.grad(meta)).lower(f).compile().memory_analysis().temp_size_in_bytes

  carry = 4 * ((dim * k + k) if form == "primal" else (k * n_tr + k + 1))
  growth = temp_bytes(50 + extra, True) - temp_bytes(50, True)
  assert growth <= extra * carry * 1.05 + 4096
  assert temp_bytes(50 + extra, False) - temp_bytes(50, False) > 1.2 * growth


# ---------------------------------------------------------------------------------------
# remat and first_order.


def test_remat_does_not_change_the_gradient(float64):
  d = _data(seed=2)
  key = jax.random.key(0)
  grads = []
  for remat in (True, False):
    cfg = inner.InnerConfig(kind="gd", steps=6, lr=0.5, step_size="fixed",
                            init="random", remat=remat)
    grads.append(jax.jit(jax.grad(lambda p: _meta_loss_library(cfg, p, d, key)))(
        jnp.asarray(d["phi"])))
  assert np.abs(grads[0]).max() > 1e-3
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["gd", "ridge"])
def test_first_order_equals_gradient_with_the_inner_path_stopped(float64, kind):
  d = _data(seed=4)
  key = jax.random.key(1)
  phi = jnp.asarray(d["phi"])
  cfg_fo = inner.InnerConfig(kind=kind, steps=6, lr=0.5, step_size="fixed",
                             first_order=True, ridge_lambda=0.5)
  cfg_so = inner.InnerConfig(kind=kind, steps=6, lr=0.5, step_size="fixed",
                             first_order=False, ridge_lambda=0.5)

  def stopped(p):
    f_tr, f_val = jnp.tanh(d["x_tr"] @ p), jnp.tanh(d["x_val"] @ p)
    if kind == "gd":
      head = inner.fit_head_gd(f_tr, d["y_tr"], init_head(key, D, K, "zeros", f_tr.dtype),
                               6, 0.5)
    else:
      head = inner.fit_head_ridge(f_tr, d["y_tr"], K, 0.5)
    head = jax.lax.stop_gradient(head)
    logp = jax.nn.log_softmax(apply_head(head, f_val))
    return -jnp.mean(logp[jnp.arange(N_VAL), d["y_val"]])

  g_fo = jax.jit(jax.grad(lambda p: _meta_loss_library(cfg_fo, p, d, key)))(phi)
  g_so = jax.jit(jax.grad(lambda p: _meta_loss_library(cfg_so, p, d, key)))(phi)
  g_manual = jax.jit(jax.grad(stopped))(phi)
  np.testing.assert_allclose(g_fo, g_manual, rtol=1e-12, atol=1e-14)
  assert np.abs(g_so - g_fo).max() > 1e-4      # the inner path carries real gradient

  # The train features only reach the val loss through the head: no gradient first-order.
  f_tr, f_val = jnp.tanh(d["x_tr"] @ phi), jnp.tanh(d["x_val"] @ phi)
  def meta_of_train_features(ft):
    return inner.meta_target_loss(cfg_fo, ft, d["y_tr"], f_val, d["y_val"], K, key)[0]

  g_ftr = jax.jit(jax.grad(meta_of_train_features))(f_tr)
  np.testing.assert_array_equal(g_ftr, 0.0)


# ---------------------------------------------------------------------------------------
# The per-step target split.


def test_resample_target_split_is_a_disjoint_sample_of_the_configured_sizes():
  n, n_tr, n_val = 30, 12, 9
  tr, val = inner.resample_target_split(jax.random.key(0), n, n_tr, n_val)
  tr, val = np.asarray(tr), np.asarray(val)
  assert tr.shape == (n_tr,) and val.shape == (n_val,)
  assert np.issubdtype(tr.dtype, np.integer) and np.issubdtype(val.dtype, np.integer)
  assert len(set(tr)) == n_tr and len(set(val)) == n_val
  assert not set(tr) & set(val)
  assert min(tr.min(), val.min()) >= 0 and max(tr.max(), val.max()) < n


def test_resample_target_split_can_use_the_whole_pool():
  tr, val = inner.resample_target_split(jax.random.key(5), 10, 6, 4)
  assert sorted(np.concatenate([tr, val]).tolist()) == list(range(10))


def test_resample_target_split_is_deterministic_per_key_and_differs_across_steps():
  base = jax.random.key(42)
  splits = []
  for step in range(5):
    key = jax.random.fold_in(base, step)
    a = inner.resample_target_split(key, 40, 10, 10)
    b = inner.resample_target_split(key, 40, 10, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    splits.append((tuple(np.asarray(a[0])), tuple(np.asarray(a[1]))))
  assert len(set(splits)) == 5
  assert len({frozenset(tr) for tr, _ in splits}) == 5    # different sets, not just orders


def test_resample_target_split_works_under_jit():
  fn = jax.jit(lambda k: inner.resample_target_split(k, 20, 5, 5))
  tr, val = fn(jax.random.key(1))
  ref = inner.resample_target_split(jax.random.key(1), 20, 5, 5)
  np.testing.assert_array_equal(tr, ref[0])
  np.testing.assert_array_equal(val, ref[1])


def test_resample_target_split_rejects_more_than_the_pool():
  with pytest.raises(ConfigError) as err:
    inner.resample_target_split(jax.random.key(0), 10, 6, 5)
  assert err.value.key == "split"
  assert "split" in str(err.value)


# ---------------------------------------------------------------------------------------
# InnerConfig.from_config.


def test_inner_config_from_base_config():
  cfg = base_config().inner
  parsed = inner.InnerConfig.from_config(cfg)
  assert parsed.kind == cfg.kind and parsed.steps == cfg.steps and parsed.lr == cfg.lr
  cfg = ml_collections.ConfigDict(dict(kind="ridge", steps=0, lr=0.01, ridge_lambda=2.0))
  parsed = inner.InnerConfig.from_config(cfg)
  assert (parsed.kind, parsed.steps, parsed.lr, parsed.ridge_lambda) == ("ridge", 0, 0.01, 2.0)


@pytest.mark.parametrize("override,key", [
    (dict(kind="newton"), "inner.kind"),
    (dict(steps=-1), "inner.steps"),
    (dict(steps=2.5), "inner.steps"),
    (dict(lr=0.0), "inner.lr"),
    (dict(lr=-0.1), "inner.lr"),
    (dict(init="ones"), "inner.init"),
    (dict(step_size="adaptive"), "inner.step_size"),
    (dict(gd_form="kernel"), "inner.gd_form"),
    (dict(ridge_lambda=0.0), "inner.ridge_lambda"),
    (dict(weight_decay=-1.0), "inner.weight_decay"),
    (dict(stepz=3), "inner.stepz"),
    (dict(kind="implicit", weight_decay=0.0), "inner.weight_decay"),
    (dict(tol=0.0), "inner.tol"),
])
def test_inner_config_rejects_bad_values_naming_the_key(override, key):
  cfg = dict(kind="gd", steps=5, lr=0.1)
  cfg.update(override)
  with pytest.raises(ConfigError) as err:
    inner.InnerConfig.from_config(ml_collections.ConfigDict(cfg))
  assert err.value.key == key
  assert key in str(err.value)


# ---------------------------------------------------------------------------------------
# implicit: the exact argmin, differentiated by the implicit function theorem.


def test_implicit_meta_gradient_matches_converged_gd_and_finite_differences(float64):
  d = _data(seed=2, n_tr=12)
  wd = 0.1
  implicit = inner.InnerConfig(kind="implicit", steps=500, weight_decay=wd, tol=1e-12)
  converged = inner.InnerConfig(kind="gd", steps=4000, lr=1.0, step_size="normalized",
                                weight_decay=wd, remat=False)
  few = inner.InnerConfig(kind="gd", steps=10, lr=1.0, step_size="normalized",
                          weight_decay=wd, remat=False)
  phi = jnp.asarray(d["phi"])
  fn = lambda cfg: jax.jit(jax.value_and_grad(lambda p: _meta_loss_library(cfg, p, d, None)))
  (v_imp, g_imp), (v_gd, g_gd), (_, g_few) = fn(implicit)(phi), fn(converged)(phi), fn(few)(phi)
  g_imp, g_gd = np.asarray(g_imp), np.asarray(g_gd)
  assert g_imp.dtype == np.float64 and np.abs(g_imp).max() > 1e-3
  np.testing.assert_allclose(v_imp, v_gd, rtol=1e-9)
  np.testing.assert_allclose(g_imp, g_gd, rtol=1e-6, atol=1e-9)
  assert np.abs(np.asarray(g_few) - g_gd).max() > 1e-3   # the agreement above has teeth

  loss = fn(implicit)
  g_fd = _central_differences(lambda p: loss(p)[0], phi)
  np.testing.assert_allclose(g_imp, g_fd, rtol=1e-5, atol=1e-8)


def test_implicit_memory_does_not_grow_with_solver_iterations():
  """XLA's own estimate of the meta-gradient's working memory: independent of the
  iteration cap for `implicit`, growing with n for `gd` without remat (the control)."""
  f_tr = jnp.zeros((100, 64), jnp.float32)
  y = jnp.zeros((100,), jnp.int32)

  def temp_bytes(cfg):
    meta = lambda f: inner.meta_target_loss(cfg, f, y, f, y, 10, None)[0]
    return jax.jit(jax.grad(meta)).lower(f_tr).compile().memory_analysis().temp_size_in_bytes

  implicit = lambda n: inner.InnerConfig(kind="implicit", steps=n, weight_decay=0.01)
  gd = lambda n: inner.InnerConfig(kind="gd", steps=n, lr=0.1, step_size="fixed", remat=False)
  assert temp_bytes(implicit(50)) == temp_bytes(implicit(1000))
  assert temp_bytes(gd(200)) > temp_bytes(gd(50))
