"""The quadratic-network theory simulation (merlin_jax/experiments/theory/).

Unit checks of the data generator / feature map, the method comparison on one fixed seed at the
main config (~15 s), and the objective check for all three methods. Measured over seeds 0-2
(docs/theory_results.md, read in docs/theory.md): the test-MSE ordering MeRLin < joint,
pre-training holds on seeds 0 and 2, on seed 1 MeRLin beats joint but not pre-training. The
objective-check orderings held on all three seeds: pre-training's objective is lower at the
hand-built V solution than at the u solution (by construction, c > k^1.5); joint training's and
MeRLin's are lower at the u solution than at their trained parameters and far lower than at the V
solution (for joint, with the best memorising target head). So the test-MSE ordering test is a
regression check of this code path on a seed where the effect is large, not evidence of a robust
effect; the objective orderings are robust in this design."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merlin_jax.experiments.theory import model, objective


def test_feature_map_is_squared_projections():
  phi = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  x = jnp.array([[2.0, 3.0, 5.0]])
  np.testing.assert_allclose(model.features(phi, x), [[4.0, 25.0]])
  head = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
  np.testing.assert_allclose(model.predict(phi, head, x), [4.0 - 25.0 + 0.5])


def test_source_labels_explained_by_u_and_by_signature():
  cfg = model.TheoryConfig(d=12, k=5, c=20.0, n_source=200, n_target=4, n_holdout=4, n_test=50)
  data = model.make_data(cfg, seed=3)
  u, v = data["u"], data["v"]
  # orthonormal directions
  np.testing.assert_allclose(v.T @ v, np.eye(cfg.k), atol=1e-5)
  np.testing.assert_allclose(v.T @ u, np.zeros(cfg.k), atol=1e-5)
  # source: y = (u.x)^2 = |P_V x|^2 / c exactly -- both features explain the label
  np.testing.assert_allclose(data["y_s"], (data["x_s"] @ u) ** 2, rtol=1e-5)
  np.testing.assert_allclose(data["y_s"], jnp.sum((data["x_s"] @ v) ** 2, 1) / cfg.c, rtol=1e-3)
  # target: V is independent noise, unrelated to the label
  corr = np.corrcoef(np.asarray(jnp.sum((data["x_te"] @ v) ** 2, 1)), np.asarray(data["y_te"]))[0, 1]
  assert abs(corr) < 0.15
  np.testing.assert_allclose(data["y_te"], (data["x_te"] @ u) ** 2, rtol=1e-5)
  # seeded
  again = model.make_data(cfg, seed=3)
  np.testing.assert_array_equal(np.asarray(again["x_s"]), np.asarray(data["x_s"]))


def test_ridge_regression_head_and_meta_gradient():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(30, 4)))
  w_true = jnp.array([1.0, -2.0, 0.5, 0.0])
  y = f @ w_true + 3.0
  head = model.fit_head_ridge_regression(f, y, 1e-8)
  np.testing.assert_allclose(head["w"], w_true, atol=1e-3)
  np.testing.assert_allclose(head["b"], 3.0, atol=1e-3)
  # the meta-loss is differentiable in phi through the solve
  cfg = model.TheoryConfig(d=8, k=3, c=10.0, n_source=50, n_target=12, n_holdout=4, n_test=20,
                           inner_train=8, width=4)
  data = model.make_data(cfg, seed=0)
  params = model.init_params(cfg, jax.random.PRNGKey(0))
  loss = model.make_loss(cfg, "merlin")
  g = jax.grad(loss)(params, data, jax.random.PRNGKey(1))
  assert np.all(np.isfinite(np.asarray(g["phi"]))) and float(jnp.abs(g["phi"]).sum()) > 0


def test_ordering_and_objective_check():
  cfg = model.TheoryConfig()
  runs = {m: model.run(cfg, m, seed=0) for m in model.METHODS}
  final = {m: {k: float(v[-1]) for k, v in hist.items()} for m, (_, hist) in runs.items()}
  # pre-training picks the source-specific subspace; joint training memorises D_t
  assert final["pretrain"]["align_v"] > 0.7
  assert final["joint"]["target_train_mse"] < 0.05
  # the paper's ordering (seed 0: MeRLin 1.36, joint 2.31, pre-training 2.71)
  assert final["merlin"]["test_mse"] < final["joint"]["test_mse"] - 0.5
  assert final["merlin"]["test_mse"] < final["pretrain"]["test_mse"] - 0.5
  assert final["merlin"]["best_u"] > final["pretrain"]["best_u"]
  # each method's own objective at its trained params and at the hand-built u / V solutions
  data = model.make_data(cfg, 0)
  rows = {m: objective.objective_row(cfg, m, data, params) for m, (params, _) in runs.items()}
  obj = {m: {k: r[k][0] for k in ("trained", "u", "V")} for m, r in rows.items()}
  # pre-training's objective prefers V (c > k^1.5: 0.0084 vs 0.0095 on every seed)
  assert obj["pretrain"]["V"] < 0.95 * obj["pretrain"]["u"]
  # joint training's objective prefers u over V + a memorising target head, and over what it found
  assert obj["joint"]["u"] < obj["joint"]["trained"] and 5 * obj["joint"]["u"] < obj["joint"]["V"]
  # MeRLin's objective prefers u over what gradient descent found, and V is far worse
  assert obj["merlin"]["u"] < obj["merlin"]["trained"] < obj["merlin"]["V"]
  assert rows["merlin"]["u"][1] < 0.01 and rows["merlin"]["V"][1] > 2.0
  assert rows["joint"]["u"][1] < 0.01
