"""BSS (Chen et al., NeurIPS 2019): fine-tuning with batch spectral shrinkage.

L_tgt + eta * sum_{i=1..k} sigma_{-i}^2, where sigma_{-1} <= sigma_{-2} <= ... are the
smallest singular values of the minibatch's target feature matrix F [B, D]: the
penalty shrinks the feature directions that carry little of the batch (where
untransferable, source-specific components hide), without pulling the weights anywhere.

How it is computed (issue 31: BSS stopped at step 8 of a 600-label run with a non-finite
bss_penalty, after LAPACK printed `SLASCL parameter number 4 had an illegal value`, the
message its SVD driver prints when a norm it rescales by is zero, inf or NaN; a single inf
in F reproduces it; see WORKSPACE.md for what was and was not reproduced):

* The derivative is written out (custom_jvp): d sum_{i in tail} sigma_i^2 =
  sum 2 sigma_i u_i^T dF v_i, i.e. the gradient 2 U_k S_k V_k^T, from the same SVD as the
  value. No 1 / (s_i^2 - s_j^2) term appears, so it is finite for repeated and zero
  singular values (where the tail's cut falls inside a block of equal singular values the
  function is not differentiable and this is one of its subgradients).
* The SVD sees F / max|F| (a constant under differentiation): max-norm 1, so LAPACK never
  takes its over/underflow rescaling (SLASCL) path, and sigma^2 is formed as (c * s)^2,
  which overflows only if the penalty itself does. bfloat16 features are promoted to
  float32 (LAPACK has no bfloat16).
* The driver is LAPACK's QR iteration (gesvd, `SvdAlgorithm.QR`), not divide-and-conquer
  (gesdd): the more robust one (the one scipy's docs point to when gesdd fails), with the
  same cost on 600 x 256 features here. TPU has one SVD (it takes no algorithm).

When F has rank r <= min(B, D) - k (more examples than independent feature directions, or
dead ReLU units: the shipped pairs' SmallCNN gives rank ~180 on a 200-example pool of
256-d features), the k smallest singular values are 0, and so are the penalty and its
gradient: BSS is fine-tuning. `check_start` measures the rank on the pre-trained features
of one target batch and the run's log warns with a batch size below it (the paper used 48
examples of 2048-d ResNet-50 features).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import linalg as lax_linalg

from merlin_jax.methods.base import (HParam, at_least, backbone_features, fine_tuning_method,
                                     sample_target_batch, take, target_loss)


def _svd(features, compute_uv: bool):
  """(c, singular values of F / c [descending], U, Vt) with c = max|F| (1 if F = 0)."""
  f = features.astype(jnp.promote_types(features.dtype, jnp.float32))
  c = jnp.max(jnp.abs(f))
  c = jnp.where(c > 0, c, 1.0)
  algorithm = None if jax.default_backend() == "tpu" else lax_linalg.SvdAlgorithm.QR
  out = lax_linalg.svd(f / c, full_matrices=False, compute_uv=compute_uv, algorithm=algorithm)
  if compute_uv:
    u, s, vt = out
    return c, s, u, vt
  return c, out, None, None


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def smallest_singular_values_sq(features, k: int):
  """sum of the k smallest squared singular values of features [B, D] (at least float32)."""
  c, s, _, _ = _svd(features, compute_uv=False)
  return jnp.sum(jnp.square(c * s[_tail(s.shape[0], k)]))


def _tail(n: int, k: int) -> slice:
  """The k smallest of n descending singular values (all n if k > n: a negative start
  would wrap around and take the wrong ones)."""
  return slice(max(n - k, 0), n)


@smallest_singular_values_sq.defjvp
def _smallest_singular_values_sq_jvp(k, primals, tangents):
  (features,), (dfeatures,) = primals, tangents
  c, s, u, vt = _svd(features, compute_uv=True)
  tail = _tail(s.shape[0], k)
  sigma = c * s[tail]                                    # the k smallest, [k]
  # d sigma_i = u_i^T dF v_i: no division, finite whatever the spectrum.
  dsigma = jnp.einsum("bi,bd,id->i", u[:, tail], dfeatures.astype(u.dtype), vt[tail])
  return jnp.sum(jnp.square(sigma)), jnp.sum(2.0 * sigma * dsigma)


def objective(ctx, params, state, batch, key, anchor=None):
  del anchor
  target = sample_target_batch(ctx, key, batch["target"])
  _, f_tgt, new_state = backbone_features(ctx, params, state, None, target["inputs"])
  tgt_loss, metrics = target_loss(ctx, params, f_tgt, target["label"])
  shrink = smallest_singular_values_sq(f_tgt, ctx.hp.bss_k)
  loss = tgt_loss + ctx.hp.bss_eta * shrink
  metrics.update(loss=loss, bss_penalty=shrink)
  return loss, (new_state, metrics)


def rank_warning(features, k: int) -> str | None:
  """None, or the line saying that the k smallest singular values of features [B, D] are
  (numerically) zero, so the penalty and its gradient are zero and BSS trains as
  fine-tuning. Rank as numpy's matrix_rank counts it in float32 (dead ReLU units, or more
  examples than independent feature directions, make it less than min(B, D))."""
  f = np.asarray(features, np.float64)
  s = np.linalg.svd(f, compute_uv=False)
  rank = int(np.sum(s > s[0] * max(f.shape) * np.finfo(np.float32).eps)) if s.size else 0
  if rank > len(s) - k:
    return None
  return (f"the pre-trained features of a target batch [{f.shape[0]}, {f.shape[1]}] have rank "
          f"{rank}, so the {k} smallest singular values are 0: the penalty and its gradient "
          f"are 0 and BSS trains as fine-tuning. Set target_batch_size below the rank "
          f"(e.g. --config.target_batch_size={max(rank // 2, 1)}; the paper: 48 examples of "
          f"2048 features)")


def check_start(ctx, params, model_state, target_pool) -> str | None:
  """rank_warning on the features of the first target_batch_size pool examples at the start."""
  n = target_pool["label"].shape[0]
  size = ctx.hp.target_batch_size or n
  inputs = take(target_pool["inputs"], np.arange(min(size, n)))
  _, f, _ = jax.jit(lambda p, st, x: backbone_features(ctx, p, st, None, x, train=False))(
      params, model_state, inputs)
  return rank_warning(jax.device_get(f), ctx.hp.bss_k)


METHOD = fine_tuning_method(
    "bss", objective, "L_tgt + eta * sum of the k smallest sigma^2 of the batch features",
    (HParam("bss.eta", 0.001, "weight of the spectral penalty (paper: 0.001)", at_least(0)),
     HParam("bss.k", 1, "how many of the smallest singular values (paper: 1)", at_least(1))),
    check_start=check_start)
