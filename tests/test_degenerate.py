"""Every objective stays finite on degenerate features (issue 31).

BSS's spectral penalty on features of rank < k and with exactly repeated singular values:
finite gradient, equal to a finite-difference check wherever the penalty is differentiable
(float64). Then every method's objective on degenerate target batches (identical images:
rank-1 features, all other singular values exactly 0; all-zero images).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merlin_jax.methods import METHODS
from merlin_jax.methods.bss import smallest_singular_values_sq
from tests.helpers import Setup


def _with_spectrum(rng, sigma, rows, cols):
  """A [rows, cols] matrix with exactly these singular values (random singular vectors)."""
  u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
  v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
  return u[:, :len(sigma)] @ np.diag(sigma) @ v[:len(sigma)]


def _fd_check(f, k, rng, h=1e-6):
  """<grad, E> against the central difference of the penalty along random directions E."""
  grad = np.asarray(jax.grad(smallest_singular_values_sq)(jnp.asarray(f), k))
  assert np.all(np.isfinite(grad))
  for _ in range(3):
    e = rng.normal(size=f.shape)
    fd = (float(smallest_singular_values_sq(jnp.asarray(f + h * e), k))
          - float(smallest_singular_values_sq(jnp.asarray(f - h * e), k))) / (2 * h)
    np.testing.assert_allclose(np.sum(grad * e), fd, rtol=1e-5, atol=1e-7)
  return grad


RANK_DEFICIENT = np.array([3.0, 2.0, 1.5, 0, 0, 0, 0, 0])    # 8 x 16, rank 3
REPEATED = np.array([3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5])  # exact pairs


@pytest.mark.parametrize("sigma,k", [
    (RANK_DEFICIENT, 1),   # inside the zero block: gradient 0
    (RANK_DEFICIENT, 5),   # the whole zero block
    (RANK_DEFICIENT, 6),   # the zero block and the smallest nonzero value
    (REPEATED, 2),         # a whole pair of equal values
    (REPEATED, 4),         # two whole pairs
])
def test_bss_penalty_gradient_matches_finite_differences(float64, sigma, k):
  rng = np.random.default_rng(k)
  f = _with_spectrum(rng, sigma, 8, 16)
  value = float(smallest_singular_values_sq(jnp.asarray(f), k))
  assert value == pytest.approx(np.sum(np.sort(sigma)[:k] ** 2), abs=1e-12)
  grad = _fd_check(f, k, rng)
  if np.sort(sigma)[k - 1] == 0:   # only zero singular values in the tail: F v = 0 there
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
  # The gradient is 2 U_k S_k V_k^T: also for a tall matrix (B > D) and its transpose.
  _fd_check(f.T, k, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["zeros", "rank_deficient", "cut_inside_a_pair", "huge",
                                  "tiny"])
def test_bss_penalty_is_finite_on_degenerate_features(float64, dtype, case):
  """Where the cut falls inside a block of equal singular values (REPEATED, k=1) the
  penalty is not differentiable: the gradient must still be finite (a subgradient).
  Huge / tiny features: float32's range is the penalty's, not LAPACK's scaling's."""
  rng = np.random.default_rng(0)
  f = {"zeros": np.zeros((8, 16)),
       "rank_deficient": _with_spectrum(rng, RANK_DEFICIENT, 8, 16),
       "cut_inside_a_pair": _with_spectrum(rng, REPEATED, 8, 16),
       "huge": 1e15 * _with_spectrum(rng, REPEATED, 8, 16),
       "tiny": 1e-25 * _with_spectrum(rng, REPEATED, 8, 16)}[case].astype(dtype)
  value, grad = jax.value_and_grad(smallest_singular_values_sq)(jnp.asarray(f), 1)
  assert grad.dtype == dtype
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  expected = {"zeros": 0.0, "rank_deficient": 0.0, "cut_inside_a_pair": 0.25,
              "huge": 0.25e30, "tiny": 0.25e-50}[case]
  if expected > 1e-37 or dtype == np.float64:   # (1e-50 is below float32's range)
    zero_tol = 1e-6 if dtype == np.float32 else 1e-20   # rounding of exact zeros
    assert float(value) == pytest.approx(expected, rel=1e-3, abs=zero_tol if expected == 0
                                         else 0)


# ---------------------------------------------------------------------------------------
# Every method on degenerate target batches.


@pytest.fixture(scope="module")
def s():
  return Setup()


def _degenerate_batch(s, kind):
  img = np.asarray(s.target["inputs"])
  inputs = {"identical": np.repeat(img[:1], len(img), axis=0),   # rank-1 features
            "zeros": np.zeros_like(img)}[kind]
  return {"source": s.source, "target": {"inputs": inputs, "label": s.target["label"]}}


@pytest.mark.parametrize("kind", ["identical"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_objective_is_finite_on_degenerate_targets(s, name, kind):
  batch = _degenerate_batch(s, kind)
  ctx = s.ctx()
  anchor = METHODS[name].anchor(ctx, s.params, s.state, batch["target"])
  loss, _, metrics, grads = s.run(name, ctx, batch=batch, anchor=anchor)
  assert np.isfinite(float(loss)), (name, kind)
  for key, value in metrics.items():
    assert np.all(np.isfinite(np.asarray(value))), (name, kind, key)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(leaf))), (name, kind)


def test_bss_penalty_with_k_above_the_rank_bound_sums_every_singular_value():
  """k > min(B, D): every sigma^2, i.e. ||F||_F^2 (a negative slice start took the largest
  k - min(B, D) values instead)."""
  f = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
  value, grad = jax.value_and_grad(smallest_singular_values_sq)(jnp.asarray(f), 6)
  assert float(value) == pytest.approx(np.sum(f.astype(np.float64) ** 2), rel=1e-5)
  np.testing.assert_allclose(grad, 2 * f, rtol=1e-4, atol=1e-5)   # d ||F||^2 = 2 F


def test_bss_penalty_takes_bfloat16_features():
  """Mixed precision (model.dtype='bfloat16') hands the penalty bfloat16 features: LAPACK
  has no bfloat16 (jnp.linalg.svd raised NotImplementedError), so they are promoted."""
  f = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
  value, grad = jax.value_and_grad(smallest_singular_values_sq)(jnp.asarray(f, jnp.bfloat16), 1)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))
  exact = np.linalg.svd(np.asarray(jnp.asarray(f, jnp.bfloat16), np.float64),
                        compute_uv=False)[-1] ** 2
  assert float(value) == pytest.approx(exact, rel=1e-4)


def test_bss_warns_when_its_penalty_is_zero_at_the_start(s):
  """Features of rank r < min(B, D) make the k smallest singular values 0: the penalty and
  its gradient are 0 and BSS is fine-tuning (the shipped pairs' SmallCNN: dead ReLU units).
  The run's log says so, with the batch size that gives BSS something to shrink."""
  from merlin_jax.methods import bss
  rng = np.random.default_rng(0)
  low = rng.normal(size=(8, 3)) @ rng.normal(size=(3, 16))          # rank 3 of 8
  line = bss.rank_warning(low.astype(np.float32), 1)
  assert "rank 3" in line and "[8, 16]" in line and "target_batch_size=1" in line
  assert bss.rank_warning(low, 5) is not None       # the 5 smallest of 8: all zero
  assert bss.rank_warning(low, 6) is None           # the 6 smallest include sigma_3 > 0
  assert bss.rank_warning(rng.normal(size=(8, 16)), 1) is None   # full rank
  # From a start: identical target images (rank-1 features) warn; distinct ones do not.
  ctx = s.ctx()
  same = _degenerate_batch(s, "identical")["target"]
  assert "rank 1," in bss.check_start(ctx, s.params, s.state, same)
  assert bss.METHOD.check_start is bss.check_start
  assert bss.check_start(ctx, s.params, s.state, s.target) is None, "random images: full rank"
