"""The inner problem of MeRLin: fit a target head on frozen features (Algorithm 1, l. 4-8).

Everything here works on *features* [N, D], computed once per outer step by the caller, so
the inner loop never touches the backbone. Solvers are differentiable in the features:
the meta-gradient flows from the target-val loss through the fitted head into phi.

Solvers (config `inner.kind`):
  gd     the paper's: n plain gradient steps of size eta on the softmax cross-entropy of
         the head over target-train features, as a `lax.scan`; the body is wrapped in
         `jax.checkpoint` (config `inner.remat`; or its backward pass written out with
         the same bound) so the backward pass stores at most the carry per step and
         memory does not grow with the features' activations. With
         fewer train examples than feature dimensions the steps run in the dual form
         (config `inner.gd_form`, `fit_head_gd`): the same iterates, ~5x cheaper.
  ridge  closed-form ridge regression of one-hot targets (R2-D2, Bertinetto et al. 2019),
         solved in whichever of the primal (D x D) or dual (N x N) form is smaller
         (`ridge_solve`, which also fits real-valued targets).
  implicit  the exact argmin of the head's L2-regularised cross-entropy (L-BFGS to
         `inner.tol`, at most `inner.steps` iterations), differentiated by the implicit
         function theorem: the meta-gradient of the exact solution, with memory
         independent of the number of iterations (needs inner.weight_decay > 0).
`first_order=True` stops the gradient through the solve: the head is a constant to the
outer step, so phi only receives the gradient of the val loss at the fitted head.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from merlin_jax import keys, losses
from merlin_jax.errors import ConfigError
from merlin_jax.models.heads import apply_head, init_head


class _InnerChecks:
  """What InnerConfig adds to its fields: made from config.inner, checked when made."""

  @classmethod
  def from_config(cls, cfg) -> "InnerConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in cfg.keys() if k not in fields]
    if unknown:
      raise ConfigError(f"inner.{unknown[0]}", f"unknown key; valid keys are {sorted(fields)}")
    return cls(**{k: cfg[k] for k in cfg.keys()})

  def __post_init__(self):   # every InnerConfig is checked, however it is made
    self.validate()

  def validate(self) -> None:
    for field in dataclasses.fields(self):
      keys.check(f"inner.{field.name}", getattr(self, field.name))
    # The one rule across keys (each key's own range and choices: its declaration).
    if self.kind == "implicit" and not self.weight_decay > 0:
      raise ConfigError("inner.weight_decay", "the implicit solver needs weight_decay > 0 (a "
                        f"strongly convex head problem), got {self.weight_decay!r}")


# config.inner as a value (frozen, hashable: a static argument of jitted code). Its fields,
# their types and defaults are the `inner.*` keys of merlin_jax/keys.py (kind, steps, lr,
# step_size, first_order, remat, gd_form, init, weight_decay, ridge_lambda, ridge_scale,
# tol), so the two cannot disagree.
InnerConfig = dataclasses.make_dataclass(
    "InnerConfig",
    [(k.name.split(".", 1)[1], type(k.default), dataclasses.field(default=k.default))
     for k in keys.section("inner")],
    bases=(_InnerChecks,), frozen=True, namespace={"__module__": __name__})


def head_train_loss(head, features, labels, weight_decay: float = 0.0):
  """L_{D_t^tr}(theta, phi) as a function of the head: cross-entropy (+ optional L2)."""
  loss = losses.softmax_cross_entropy(apply_head(head, features), labels)
  if weight_decay:
    loss = loss + losses.weight_decay(head["w"], weight_decay)
  return loss


def curvature_bound(features: jax.Array, weight_decay: float = 0.0) -> jax.Array:
  """L_hat >= the largest Hessian eigenvalue of the head's train loss.

  The softmax cross-entropy Hessian in the logits is <= 1/2 I, so in (W, b) it is
  <= 1/2 (lambda_max(F^T F / N) + 1) <= 1/2 (mean ||f||^2 + 1), plus the L2 term.
  """
  mean_sq_norm = jnp.mean(jnp.sum(jnp.square(features), axis=-1))
  return 0.5 * (mean_sq_norm + 1.0) + weight_decay


def gd_form(num_train: int, feature_dim: int, form: str = "auto") -> str:
  """The form `fit_head_gd` runs in: 'auto' is 'dual' when N_tr <= D (its per-step
  matmul is N_tr x N_tr x K against the primal's two N_tr x D x K), else 'primal'."""
  if form == "auto":
    return "dual" if num_train <= feature_dim else "primal"
  return form


def fit_head_gd(features: jax.Array, labels: jax.Array, head0, steps: int, lr: float,
                weight_decay: float = 0.0, remat: bool = True, return_trajectory: bool = False,
                step_size: str = "fixed", form: str = "auto"):
  """theta^[k+1] = theta^[k] - eta * grad L_tr(theta^[k])  for k < n   (Algorithm 1, l. 6-8).

  features: [N_tr, D]; labels: [N_tr] int. Returns theta^[n] (and, if asked, the train
  loss before each step, [n]).

  step_size='fixed' is the paper's plain step eta. Plain GD diverges once eta exceeds
  2 / L, and L grows with the feature norm, which the outer loop changes freely: then
  the inner loop, and the meta-gradient through it, blow up. 'normalized' uses
  eta / L_hat (`curvature_bound`), so eta < 2 is stable at any feature scale; the
  meta-gradient also flows through L_hat (it is part of the computed solve).

  The gradient of the softmax cross-entropy of a linear head is written out,
  grad_W = F^T R / N + wd W, grad_b = 1^T R / N with R = softmax(F W + b) - onehot(y),
  and the same steps run in one of two forms (`gd_form`; the same values up to float
  rounding, the meta-gradient being the autodiff of either):
    primal  carries theta = (W, b): two [N, D] x [D, K] matmuls per step.
    dual    W_k stays in the span of F's rows: W_k = s^k W_0 - (eta / N) F^T A_k with
            A_{k+1} = s A_k + R_k (s = 1 - eta wd), so the logits are
            Z_k = s^k F W_0 + 1 b_k^T - (eta / N) (F F^T) A_k: one [K, N] x [N, N] matmul per
            step on the carry (A [K, N], b [K], s^k), W formed once at the end. The
            meta-gradient reaches F through the Gram matrix F F^T, F W_0 and that last
            product. Cheaper whenever N_tr <= D (MeRLin's 100 x 256 split: ~5x per step).
  With `remat` the backward pass keeps at most the carry per step (the head, or A and b)
  and recomputes the rest: the scan body is a `jax.checkpoint`, except in the dual form
  without weight decay, whose backward pass is written out (`_dual_loop`: fewer XLA
  kernels per inner step, which is what a step costs on a CPU; issue 32).
  """
  if step_size == "normalized":
    lr = lr / curvature_bound(features, weight_decay)
  n, d = features.shape
  num_classes = head0["w"].shape[-1]
  scale = lr / n
  decay = 1.0 - lr * weight_decay        # s (exactly 1 without weight decay)
  form = gd_form(n, d, form)

  if form == "primal":
    onehot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)   # [N, K]

    def step(head, _):
      logits = features @ head["w"] + head["b"]                          # [N, K]
      r = jax.nn.softmax(logits) - onehot                                 # N dL/dlogits
      new = {"w": decay * head["w"] - scale * (features.T @ r),
             "b": head["b"] - scale * jnp.sum(r, axis=0)}
      return new, (_train_loss(logits, onehot, head["w"], weight_decay)
                   if return_trajectory else None)
    carry0, to_head = head0, lambda head: head
  else:   # dual
    onehot_t = jax.nn.one_hot(labels, num_classes, dtype=features.dtype).T   # [K, N]
    gram = scale * (features @ features.T)                                  # [N, N]
    fw0_t = (features @ head0["w"]).T                                       # [K, N]

    def to_head(carry):
      a, b, c = carry
      return {"w": c * head0["w"] - scale * (a @ features).T, "b": b}

    if not weight_decay and not return_trajectory:   # s = 1: see _dual_loop
      gram1 = 0.5 * (gram + gram.T) + scale          # symmetric; + the bias's column
      a = _dual_loop(steps, bool(remat), fw0_t + head0["b"][:, None], gram1, onehot_t)
      return {"w": head0["w"] - scale * (a @ features).T,
              "b": head0["b"] - scale * jnp.sum(a, axis=1)}

    def step(carry, _):
      a, b, c = carry          # A_k^T [K, N], b_k [K], s^k
      logits_t = c * fw0_t - a @ gram + b[:, None]                          # Z_k^T [K, N]
      r = jax.nn.softmax(logits_t, axis=0) - onehot_t                       # R_k^T
      new = (decay * a + r, b - scale * jnp.sum(r, axis=1), decay * c)
      return new, (_train_loss(logits_t.T, onehot_t.T, to_head(carry)["w"], weight_decay)
                   if return_trajectory else None)
    carry0 = (jnp.zeros_like(onehot_t), head0["b"], jnp.ones((), features.dtype))

  if remat:
    step = jax.checkpoint(step)
  carry, trajectory = jax.lax.scan(step, carry0, None, length=steps)
  head = to_head(carry)
  return (head, trajectory) if return_trajectory else head


# The dual-form loop without weight decay (s = 1), its backward pass written out.
#
# With s = 1, A_k = R_0 + ... + R_{k-1} and b_k = b_0 - (eta / N) A_k 1, so the bias is one
# more feature, constant 1: Z_k = Z_0 - A_k G1 with Z_0 = F W_0 + 1 b_0^T and
# G1 = (eta / N) (F F^T + 1 1^T). The loop carries A only:
#     P_k = softmax(Z_0 - A_k G1) (over the K classes),   A_{k+1} = A_k + P_k - Y.
# Its autodiff (a checkpointed scan over A, b, s^k) ran 15 XLA kernels per forward inner
# step and 19 per backward one (with the recomputed forward); on a CPU, where the [K, N] x
# [N, N] products are a few microseconds, a step's cost is mostly those kernels (issue 32).
# Written out, 9 and 10:
#   remat=True   keeps P_k per step (K N floats: less than the carry A_k, b_k, s^k that the
#                checkpointed scan kept) and recovers A_k = A_{k+1} - (P_k - Y) going
#                backwards, so nothing is recomputed; 2 products per backward step
#                (Zbar_k G1, and G1's cotangent -A_k^T Zbar_k accumulated). Rounding:
#                A_k recovered this way differs from the forward's by a few ulp of |A| per
#                step (|A| <= k), the order of the float32 autodiff's own sums;
#                tests/test_inner.py checks both forms in float64 and float32.
#   remat=False  keeps A_k and P_k and stacks Zbar_k: 1 product per backward step, and G1's
#                cotangent as one [N, nK] x [nK, N] matmul after the loop.
# G1 is symmetric by construction (0.5 (G + G^T)), so Zbar_k G1^T = Zbar_k G1: with the
# transposed operand the products were slower here (~0.5 ms over n = 200's 400 of them).
# The meta-gradient of n = 200 steps at 100 x 256 features (fwd + bwd, alone, 2-core CPU):
# 6.3-6.5 ms autodiff, 5.0 written out (remat); 5.8 and 3.9 without remat.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dual_loop(steps, remat, z0_t, gram1, onehot_t):
  """A_n^T [K, N] after `steps` dual-form GD steps from A_0 = 0 (s = 1)."""
  return _dual_loop_fwd(steps, remat, z0_t, gram1, onehot_t)[0]


def _dual_loop_fwd(steps, remat, z0_t, gram1, onehot_t):
  def step(a, _):
    p = jax.nn.softmax(z0_t - a @ gram1, axis=0)                      # P_k^T [K, N]
    return a + (p - onehot_t), (p if remat else (a, p))
  a, saved = jax.lax.scan(step, jnp.zeros_like(onehot_t), None, length=steps)
  return a, (z0_t, gram1, onehot_t, saved, a)


def _dual_loop_bwd(steps, remat, residuals, a_bar):
  z0_t, gram1, onehot_t, saved, a_n = residuals
  k, n = onehot_t.shape

  def back(carry, x):
    a_next, a_bar, gram_bar, z0_bar = carry     # A_{k+1} and the cotangent of A_{k+1}
    if remat:
      p = x
      a = a_next - (p - onehot_t)               # A_k
    else:
      a, p = x
    z_bar = p * (a_bar - jnp.sum(p * a_bar, axis=0, keepdims=True))   # softmax over K
    a_bar_k = a_bar - z_bar @ gram1
    if remat:
      return (a, a_bar_k, gram_bar - a.T @ z_bar, z0_bar + z_bar), None
    return (a_next, a_bar_k, gram_bar, z0_bar + z_bar), z_bar
  init = (a_n, a_bar, jnp.zeros_like(gram1), jnp.zeros_like(z0_t))
  (_, _, gram_bar, z0_bar), z_all = jax.lax.scan(back, init, saved, reverse=True)
  if not remat:
    gram_bar = -(saved[0].reshape(steps * k, n).T @ z_all.reshape(steps * k, n))
  return z0_bar, gram_bar, jnp.zeros_like(onehot_t)


_dual_loop.defvjp(_dual_loop_fwd, _dual_loop_bwd)


def _train_loss(logits, onehot, w, weight_decay: float):
  """`head_train_loss` from the logits [N, K] (the trajectory of `fit_head_gd`)."""
  loss = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
  if weight_decay:
    loss = loss + losses.weight_decay(w, weight_decay)
  return loss


def ridge_solve(features: jax.Array, targets: jax.Array, lam, relative: bool = False,
                eps: float = 0.0):
  """argmin_{W,b} ||[X 1] [W; b] - Y||^2 + lam' ||W||^2 (bias not penalised). Returns (W, b).

  targets: [N] (real-valued regression: W [D], b scalar) or [N, K] (W [D, K], b [K]).
  lam' = lam (absolute), or with `relative` lam * the mean diagonal of the centred Gram
  X_c^T X_c, which makes the head invariant to rescaling X; plus `eps`, which keeps the
  solve defined at lam = 0 or constant features. Differentiable in `features` through
  `jnp.linalg.solve`. Centering handles the bias: b = mean(Y) - mean(X) W.
  """
  x_mean = jnp.mean(features, axis=0)
  y_mean = jnp.mean(targets, axis=0)
  xc, yc = features - x_mean, targets - y_mean
  n, d = features.shape
  gram = xc.T @ xc if relative or d <= n else None   # D x D: built only where it is used
  if relative:
    lam = lam * jnp.trace(gram) / d
  lam = lam + eps
  if d <= n:   # primal: (X^T X + lam I)^{-1} X^T Y, a D x D solve
    w = jnp.linalg.solve(gram + lam * jnp.eye(d, dtype=features.dtype), xc.T @ yc)
  else:        # dual (Woodbury): X^T (X X^T + lam I)^{-1} Y, an N x N solve
    w = xc.T @ jnp.linalg.solve(xc @ xc.T + lam * jnp.eye(n, dtype=features.dtype), yc)
  return w, y_mean - x_mean @ w


def fit_head_ridge(features: jax.Array, labels: jax.Array, num_classes: int, lam: float,
                   scale: float = 1.0):
  """`ridge_solve` of one-hot targets, times `scale`: the head {w [D, K], b [K]}."""
  y = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  w, b = ridge_solve(features, y, lam)
  return {"w": scale * w, "b": scale * b}


def _lbfgs_argmin(features, labels, num_classes: int, weight_decay: float, max_steps: int,
                  tol: float):
  """argmin_theta L_tr(theta) + wd/2 ||W||^2 by L-BFGS, to a gradient norm below `tol` or
  `max_steps` iterations, from theta = 0."""
  d = features.shape[-1]
  head0 = {"w": jnp.zeros((d, num_classes), features.dtype),
           "b": jnp.zeros((num_classes,), features.dtype)}
  objective = lambda head: head_train_loss(head, features, labels, weight_decay)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    head, state = carry
    value, grad = value_and_grad(head, state=state)
    updates, state = solver.update(grad, state, head, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(head, updates), state

  def running(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    grad = optax.tree_utils.tree_get(state, "grad")
    return (count == 0) | ((count < max_steps) & (optax.tree_utils.tree_norm(grad) >= tol))

  return jax.lax.while_loop(running, step, (head0, solver.init(head0)))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def fit_head_implicit(features: jax.Array, labels: jax.Array, num_classes: int,
                      weight_decay: float, max_steps: int, tol: float):
  """The exact inner argmin (`_lbfgs_argmin`), differentiated by the implicit function
  theorem: d theta*/dF^T g = -(d/dF grad_theta L)^T H^{-1} g, with H the head's Hessian at
  theta* (a conjugate-gradient solve of Hessian-vector products).

  With wd > 0 the problem is strongly convex in W, and in b up to the shift b + c 1, which
  changes no prediction and to which the cotangent of any softmax loss is orthogonal; so
  the meta-gradient is that of the exact solution, and its memory does not grow with the
  number of solver iterations (nothing of them is stored for the backward pass).
  """
  return _lbfgs_argmin(features, labels, num_classes, weight_decay, max_steps, tol)


def _implicit_fwd(features, labels, num_classes, weight_decay, max_steps, tol):
  head = _lbfgs_argmin(features, labels, num_classes, weight_decay, max_steps, tol)
  return head, (features, labels, head)


def _implicit_bwd(num_classes, weight_decay, max_steps, tol, residuals, g):
  del num_classes, max_steps
  features, labels, head = residuals
  grad_head = lambda h, f: jax.grad(head_train_loss)(h, f, labels, weight_decay)
  hvp = lambda v: jax.jvp(lambda h: grad_head(h, features), (head,), (v,))[1]
  size = sum(x.size for x in jax.tree.leaves(head))
  u = jax.scipy.sparse.linalg.cg(hvp, g, tol=tol, maxiter=size)[0]    # H u = g
  _, vjp_features = jax.vjp(lambda f: grad_head(head, f), features)
  return (-vjp_features(u)[0], None)


fit_head_implicit.defvjp(_implicit_fwd, _implicit_bwd)


def fit_head(inner: InnerConfig, features: jax.Array, labels: jax.Array, num_classes: int,
             key: jax.Array | None):
  """The configured inner solver: theta_hat_t(phi) ~ argmin_theta L_{D_t^tr}(theta, phi)."""
  if inner.kind == "gd":
    head0 = init_head(key, features.shape[-1], num_classes, inner.init, features.dtype)
    head = fit_head_gd(features, labels, head0, inner.steps, inner.lr, inner.weight_decay,
                       inner.remat, step_size=inner.step_size, form=inner.gd_form)
  elif inner.kind == "ridge":
    head = fit_head_ridge(features, labels, num_classes, inner.ridge_lambda, inner.ridge_scale)
  else:   # implicit (InnerConfig checks kind when it is made)
    head = fit_head_implicit(features, labels, num_classes, inner.weight_decay, inner.steps,
                             inner.tol)
  if inner.first_order:
    head = jax.lax.stop_gradient(head)
  return head


def resample_target_split(key: jax.Array, num_target: int, train_size: int, val_size: int):
  """Algorithm 1, l. 5: a fresh random train/val partition of the target set.

  Returns (train_idx [train_size], val_idx [val_size]), disjoint int32 index arrays into
  the target set; the same key gives the same split.
  """
  if train_size + val_size > num_target:
    raise ConfigError("split", f"train_size + val_size = {train_size + val_size} exceeds the "
                      f"{num_target} target examples available; lower split.train_size/val_size")
  perm = jax.random.permutation(key, num_target)
  return perm[:train_size], perm[train_size:train_size + val_size]


def meta_target_loss(inner: InnerConfig, features_train, labels_train, features_val, labels_val,
                     num_classes: int, key: jax.Array | None):
  """L_meta,t(phi) = L_{D_t^val}(theta_hat_t(phi), phi)   (the meta-objective).

  Returns (val_loss, metrics). Differentiable in both feature arrays; through the inner
  solve too unless `inner.first_order`.
  """
  head = fit_head(inner, features_train, labels_train, num_classes, key)
  val_logits = apply_head(head, features_val)
  val_loss = losses.softmax_cross_entropy(val_logits, labels_val)
  metrics = {
      "meta_val_loss": val_loss,
      "meta_val_accuracy": losses.accuracy(val_logits, labels_val),
      "meta_train_loss": jax.lax.stop_gradient(
          losses.softmax_cross_entropy(apply_head(head, features_train), labels_train)),
  }
  return val_loss, metrics


