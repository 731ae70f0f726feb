"""Each method's objective (merlin_jax/methods): what makes it that method.

A tiny SmallCNN (conv widths (4, 8), 16 features, 8x8x1 inputs, no batch norm unless a
test says so) so that every objective is a few milliseconds once compiled. Without batch
norm the features of an example do not depend on the rest of the batch, so objectives
that run the backbone on different batches can be compared exactly (up to float32). The
setup (helpers.Setup) is shared with tests/test_degenerate.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merlin_jax import inner, losses
from merlin_jax.errors import ConfigError
from merlin_jax.methods import METHODS, Context, get_method
from merlin_jax.models import apply_head
from tests.helpers import (
    FEAT, K_SRC, K_TGT, N_TGT, SPLIT_TR, SPLIT_VAL, Setup, tiny_hyper)

TOL = dict(rtol=2e-5, atol=1e-6)

# A source batch no backbone can read (wrong image shape: concatenating it with the target
# or running the CNN on it fails): a method that ignores the source must not notice it.
UNREADABLE_SOURCE = {"inputs": np.zeros((3, 5, 5, 2), np.float32), "label": np.zeros(3, np.int32)}

ALL_METHODS = {"pretrain", "target_only", "finetune", "joint", "l2sp", "merlin", "merlin_ft",
               "bss", "delta", "co_tuning"}


@pytest.fixture(scope="module")
def s():
  return Setup()


def _assert_tree_close(a, b, **tol):
  tol = tol or TOL
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def _assert_tree_zero(tree):
  jax.tree.map(lambda x: np.testing.assert_array_equal(x, 0.0), tree)


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def _independent_meta(s, ctx, params, key):
  """L_meta,t written from its definition (Algorithm 1, l. 4-9) with the library's pieces:
  the split of `key`'s first half, features of the target examples, the inner solver."""
  k_split, k_head = jax.random.split(key)
  tr, val = inner.resample_target_split(k_split, N_TGT, SPLIT_TR, SPLIT_VAL)
  tr, val = np.asarray(tr), np.asarray(val)
  img, lab = s.target["inputs"], s.target["label"]
  feats, _ = s.backbone.features(params["backbone"], s.state,
                                 np.concatenate([img[tr], img[val]]), train=True)
  return inner.meta_target_loss(ctx.hp.inner, feats[:SPLIT_TR], lab[tr], feats[SPLIT_TR:],
                                lab[val], K_TGT, k_head)[0]


# ---------------------------------------------------------------------------------------
# Registry.


def test_registry_has_every_method_under_its_own_name():
  assert set(METHODS) == ALL_METHODS
  for name in ALL_METHODS:
    assert get_method(name).name == name


def test_registry_rejects_an_unknown_method_naming_the_key():
  with pytest.raises(ConfigError) as err:
    get_method("merlin2")
  assert err.value.key == "method"
  assert "method" in str(err.value) and "merlin2" in str(err.value)


def test_method_flags():
  assert {n for n, m in METHODS.items() if m.uses_source} == {"pretrain", "joint", "merlin"}
  assert {n for n, m in METHODS.items() if m.needs_pretrained} == {"finetune", "l2sp",
                                                                    "merlin_ft", "bss", "delta",
                                                                    "co_tuning"}
  assert {n for n, m in METHODS.items() if m.uses_anchor} == {"l2sp", "delta", "co_tuning"}
  assert {n for n, m in METHODS.items() if m.pretrained_heads} == {"co_tuning"}


# ---------------------------------------------------------------------------------------
# Target-side methods never read the source.


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if not m.uses_source))
def test_methods_without_source_never_read_it(s, name):
  ctx = s.ctx()
  anchor = _anchor(s, name, ctx)
  without = s.run(name, ctx, batch={"source": None, "target": s.target}, anchor=anchor)
  unread = s.run(name, ctx, batch={"source": UNREADABLE_SOURCE, "target": s.target},
                 anchor=anchor)
  np.testing.assert_allclose(unread[0], without[0], **TOL)
  _assert_tree_close(unread[3], without[3])
  if "source_head" not in METHODS[name].pretrained_heads:   # (Co-Tuning trains it on D_t)
    _assert_tree_zero(without[3]["source_head"])
  assert np.isfinite(without[0]) and _max_abs(without[3]["backbone"]) > 0


_ANCHORS = {}   # (method, hp) -> the anchor (s.run memoises on the anchor's id)


def _anchor(s, name, ctx):
  key = (name, ctx.hp)
  if key not in _ANCHORS:
    _ANCHORS[key] = METHODS[name].anchor(ctx, s.params, s.state, s.target)
  return _ANCHORS[key]


def test_target_only_is_the_target_cross_entropy_of_the_learned_head(s):
  loss = s.run("target_only", s.ctx(), batch={"source": None, "target": s.target})[0]
  feats, _ = s.backbone.features(s.params["backbone"], s.state, s.target["inputs"], train=True)
  expected = losses.softmax_cross_entropy(apply_head(s.params["target_head"], feats),
                                          s.target["label"])
  np.testing.assert_allclose(loss, expected, **TOL)
  # finetune is the same objective (it differs only in where training starts).
  np.testing.assert_allclose(s.run("finetune", s.ctx())[0], loss, **TOL)


def test_target_batch_size_larger_than_the_pool_is_a_config_error(s):
  with pytest.raises(ConfigError) as err:
    s.run("target_only", s.ctx(target_batch_size=N_TGT + 1))
  assert err.value.key == "target_batch_size"


# ---------------------------------------------------------------------------------------
# L2-SP.


def test_l2sp_at_the_anchor_with_beta_zero_equals_finetune(s):
  ctx = s.ctx(alpha=0.7, beta=0.0)
  l2sp = s.run("l2sp", ctx, anchor=s.params["backbone"])
  ft = s.run("finetune", ctx)
  np.testing.assert_allclose(l2sp[0], ft[0], **TOL)
  _assert_tree_close(l2sp[3], ft[3])


def test_l2sp_penalties_pull_the_backbone_to_the_anchor_and_shrink_the_head(s):
  alpha, beta = 0.7, 0.3
  rng = np.random.default_rng(1)
  anchor = jax.tree.map(lambda w: w + 0.1 * rng.normal(size=w.shape).astype(np.float32),
                        s.params["backbone"])
  l2sp = s.run("l2sp", s.ctx(alpha=alpha, beta=beta), anchor=anchor)
  ft = s.run("finetune", s.ctx(alpha=alpha, beta=beta))
  diff = jax.tree.map(lambda w, w0: np.asarray(w, np.float64) - np.asarray(w0, np.float64),
                      s.params["backbone"], anchor)
  dist = sum(np.sum(d * d) for d in jax.tree.leaves(diff))
  head_w = np.asarray(s.params["target_head"]["w"], np.float64)
  np.testing.assert_allclose(l2sp[0] - ft[0],
                             0.5 * alpha * dist + 0.5 * beta * np.sum(head_w ** 2), rtol=1e-4)
  # d/dw [alpha/2 ||w - w0||^2] = alpha (w - w0);  d/dtheta [beta/2 ||theta_w||^2] = beta theta_w.
  _assert_tree_close(jax.tree.map(lambda a, b: a - b, l2sp[3]["backbone"], ft[3]["backbone"]),
                     jax.tree.map(lambda d: alpha * d, diff), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(l2sp[3]["target_head"]["w"] - ft[3]["target_head"]["w"],
                             beta * head_w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(l2sp[3]["target_head"]["b"], ft[3]["target_head"]["b"], **TOL)


def test_l2sp_without_anchor_fails(s):
  with pytest.raises(ValueError, match="anchor"):
    s.run("l2sp", s.ctx(), anchor=None)


# ---------------------------------------------------------------------------------------
# Joint training.


def test_joint_with_alpha_zero_equals_pretrain(s):
  joint = s.run("joint", s.ctx(alpha=0.0))
  pre = s.run("pretrain", s.ctx())
  np.testing.assert_allclose(joint[0], pre[0], **TOL)
  _assert_tree_close(joint[3]["backbone"], pre[3]["backbone"])
  _assert_tree_close(joint[3]["source_head"], pre[3]["source_head"])
  _assert_tree_zero(joint[3]["target_head"])
  assert _max_abs(pre[3]["backbone"]) > 0


def test_joint_with_alpha_one_is_the_target_only_loss(s):
  joint = s.run("joint", s.ctx(alpha=1.0))
  tgt = s.run("target_only", s.ctx())
  np.testing.assert_allclose(joint[0], tgt[0], **TOL)
  _assert_tree_close(joint[3]["backbone"], tgt[3]["backbone"])
  _assert_tree_close(joint[3]["target_head"], tgt[3]["target_head"])
  _assert_tree_zero(joint[3]["source_head"])


def test_joint_is_the_alpha_weighted_sum(s):
  alpha = 0.3
  joint = s.run("joint", s.ctx(alpha=alpha))
  pre = s.run("pretrain", s.ctx())
  tgt = s.run("target_only", s.ctx())
  np.testing.assert_allclose(joint[0], (1 - alpha) * pre[0] + alpha * tgt[0], **TOL)
  _assert_tree_close(joint[3]["backbone"],
                     jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b,
                                  pre[3]["backbone"], tgt[3]["backbone"]))


# ---------------------------------------------------------------------------------------
# MeRLin and MeRLin-ft.


def test_merlin_with_rho_zero_equals_pretrain(s):
  merlin = s.run("merlin", s.ctx(rho=0.0))
  pre = s.run("pretrain", s.ctx())
  np.testing.assert_allclose(merlin[0], pre[0], **TOL)
  _assert_tree_close(merlin[3]["backbone"], pre[3]["backbone"])
  _assert_tree_close(merlin[3]["source_head"], pre[3]["source_head"])
  _assert_tree_zero(merlin[3]["target_head"])


def test_merlin_is_pretrain_plus_rho_times_the_meta_loss(s):
  rho = 2.5
  ctx = s.ctx(rho=rho)
  merlin = s.run("merlin", ctx)
  pre = s.run("pretrain", ctx)
  meta, meta_grads = jax.value_and_grad(lambda p: _independent_meta(s, ctx, p, s.key))(s.params)
  assert float(meta) > 0
  np.testing.assert_allclose(merlin[2]["meta_val_loss"], meta, **TOL)
  np.testing.assert_allclose(merlin[0], pre[0] + rho * meta, **TOL)
  # The meta-gradient reaches phi (through the inner steps) and only phi: theta_t is refit
  # inside every step, so the learned target head gets nothing.
  assert _max_abs(meta_grads["backbone"]) > 1e-4
  _assert_tree_close(merlin[3]["backbone"],
                     jax.tree.map(lambda a, b: a + rho * b, pre[3]["backbone"],
                                  meta_grads["backbone"]), rtol=1e-4, atol=1e-6)
  _assert_tree_close(merlin[3]["source_head"], pre[3]["source_head"])
  _assert_tree_zero(merlin[3]["target_head"])


def test_merlin_resamples_the_split_with_the_key(s):
  ctx = s.ctx()
  a = s.run("merlin_ft", ctx, batch={"source": None, "target": s.target})
  b = s.run("merlin_ft", ctx, batch={"source": None, "target": s.target},
            key=jax.random.key(8))
  assert abs(float(a[0]) - float(b[0])) > 1e-6


def test_merlin_ft_is_rho_times_the_meta_loss_and_ignores_the_source(s):
  rho = 0.5
  ctx = s.ctx(rho=rho)
  ft = s.run("merlin_ft", ctx, batch={"source": None, "target": s.target})
  meta, meta_grads = jax.value_and_grad(lambda p: _independent_meta(s, ctx, p, s.key))(s.params)
  np.testing.assert_allclose(ft[0], rho * meta, **TOL)
  _assert_tree_close(ft[3]["backbone"], jax.tree.map(lambda g: rho * g, meta_grads["backbone"]),
                     rtol=1e-4, atol=1e-6)
  _assert_tree_zero(ft[3]["source_head"])
  _assert_tree_zero(ft[3]["target_head"])
  assert "source_loss" not in ft[2]


def test_merlin_ft_first_order_changes_the_backbone_gradient(s):
  batch = {"source": None, "target": s.target}
  so = s.run("merlin_ft", s.ctx(), batch=batch)
  fo = s.run("merlin_ft", s.ctx(inner=inner.InnerConfig(
      kind="gd", steps=4, lr=0.5, step_size="fixed", first_order=True)), batch=batch)
  np.testing.assert_allclose(so[0], fo[0], **TOL)     # same value, different gradient
  gap = jax.tree.map(lambda a, b: a - b, so[3]["backbone"], fo[3]["backbone"])
  assert _max_abs(gap) > 1e-6


@pytest.mark.parametrize("name", ["joint", "merlin"])
def test_a_pass_per_part_gives_the_one_pass_loss_and_gradient(s, name):
  """Context.pass_per_part (CPU meshes) runs source and target through a backbone without
  batch statistics separately: the same loss, metrics and gradient as the one pass over
  their concatenation, up to the order of float sums."""
  objective = get_method(name).objective
  def run(ctx):
    fn = jax.value_and_grad(lambda p: objective(ctx, p, s.state, s.batch, s.key, None),
                            has_aux=True)
    (loss, (new_state, metrics)), grads = fn(s.params)
    return loss, new_state, metrics, grads
  one, two = run(s.ctx()), run(dataclasses.replace(s.ctx(), pass_per_part=True))
  np.testing.assert_allclose(one[0], two[0], **TOL)
  _assert_tree_close(one[2], two[2])
  _assert_tree_close(one[3], two[3])
  assert _max_abs(one[3]["backbone"]) > 1e-4   # the backbone's gradient is compared
  assert two[1] == s.state == {}


def test_make_train_step_asks_for_a_pass_per_part_on_cpu():
  import optax
  from merlin_jax import train
  from merlin_jax.methods import Method
  seen = []
  def objective(ctx, params, state, batch, key, anchor):
    seen.append(ctx.pass_per_part)
    loss = jnp.sum(params["w"] ** 2)
    return loss, (state, {"loss": loss})
  tx = optax.sgd(0.1)
  params = {"w": jnp.ones(3)}
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                           opt_state=tx.init(params), best_val_accuracy=jnp.zeros(()),
                           best_step=jnp.zeros((), jnp.int32))
  method = Method("spy", objective, uses_source=True, needs_pretrained=False,
                  eval_head="learned")
  ctx = Context(backbone=None, hp=tiny_hyper())
  train.make_train_step(method, ctx, tx, jax.random.key(0))(state, None, None, None)
  assert jax.default_backend() == "cpu" and seen == [True]


@pytest.mark.parametrize("pass_per_part", [False, True])
def test_merlin_updates_batch_norm_statistics_in_one_pass(pass_per_part):
  # With batch norm the statistics span [source; target]: one pass even when the context
  # asks for a pass per part.
  s_bn = Setup(batch_norm=True)
  assert "batch_stats" in s_bn.state
  loss, new_state, _, _ = s_bn.run(
      "merlin", dataclasses.replace(s_bn.ctx(), pass_per_part=pass_per_part))
  assert np.isfinite(loss)
  assert jax.tree.structure(new_state) == jax.tree.structure(s_bn.state)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         new_state, s_bn.state)
  assert all(jax.tree.leaves(changed))
  # One pass over [source; target split] with momentum 0.9, from running mean 0: the first
  # batch norm's mean is 0.1 * the batch mean of the first conv's output. (The split uses
  # the whole target pool here, and a mean does not depend on the order.)
  assert SPLIT_TR + SPLIT_VAL == N_TGT
  conv = s_bn.params["backbone"]["Conv_0"]
  x = np.concatenate([s_bn.source["inputs"], s_bn.target["inputs"]])
  y = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
  np.testing.assert_allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"],
                             0.1 * np.asarray(jnp.mean(y, axis=(0, 1, 2))), rtol=1e-4,
                             atol=1e-6)


def test_hyper_is_static_under_jit(s):
  # Hyper and Context must be hashable: the training step closes over them under jit.
  hash(s.ctx())
  assert s.ctx().hp.replace(rho=3.0).rho == 3.0


def test_a_method_registered_from_user_code_declares_its_own_hyperparameters():
  """A method's hyperparameters are its own: registering it adds its config key (with the
  default), the Hyper attribute the objective reads, and the key's check."""
  from merlin_jax import methods
  from merlin_jax.config_base import base_config
  from merlin_jax.methods import base

  def objective(ctx, params, state, batch, key, anchor=None):
    del params, state, batch, key, anchor
    return ctx.hp.toy_gamma, ({}, {})

  toy = methods.register_method(methods.Method(
      "toy_gamma", objective, uses_source=False, needs_pretrained=False, eval_head="learned",
      hyperparameters=(methods.HParam("toy.gamma", 2.0, "a toy weight", base.at_least(0)),)))
  try:
    assert methods.get_method("toy_gamma") is toy
    config = base_config()
    assert config.toy.gamma == 2.0 and "toy_gamma" not in tiny_hyper().__repr__()
    config.toy.gamma = 3
    hp = toy.hyper(config, K_SRC, K_TGT)
    assert hp.toy_gamma == 3.0 and isinstance(hp.toy_gamma, float)
    assert toy.objective(Context(backbone=None, hp=hp), None, None, None, None)[0] == 3.0
    config.toy.gamma = -1.0
    with pytest.raises(ConfigError) as err:
      toy.hyper(config, K_SRC, K_TGT)
    assert err.value.key == "toy.gamma"
    with pytest.raises(AttributeError, match="declare it"):
      tiny_hyper().undeclared_weight   # pylint: disable=expression-not-assigned
  finally:
    methods.METHODS.pop("toy_gamma")
    base._DECLARED.pop("toy_gamma")   # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------
# BSS and DELTA (regularised fine-tuning baselines), against hand-computed values.


def _np_ce(logits, labels):
  z = logits - logits.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -np.mean(logp[np.arange(len(labels)), labels])


def _np_features(s, backbone_params):
  f, _ = s.backbone.features(backbone_params, s.state, s.target["inputs"], train=True)
  return np.asarray(f, np.float64)


@pytest.mark.parametrize("k", [1, 3])
def test_bss_is_cross_entropy_plus_the_smallest_squared_singular_values(s, k):
  eta = 0.3
  loss, _, metrics, _ = s.run("bss", s.ctx(bss_eta=eta, bss_k=k))
  f = _np_features(s, s.params["backbone"])                       # [8, 16]: 8 singular values
  head = s.params["target_head"]
  ce = _np_ce(f @ np.asarray(head["w"], np.float64) + np.asarray(head["b"]), s.target["label"])
  sigma = np.linalg.svd(f, compute_uv=False)
  penalty = np.sum(np.sort(sigma)[:k] ** 2)
  assert penalty > 1e-3                                           # a real term
  np.testing.assert_allclose(metrics["bss_penalty"], penalty, rtol=1e-4)
  np.testing.assert_allclose(loss, ce + eta * penalty, rtol=1e-5)


def test_delta_at_the_anchor_is_finetuning_plus_head_decay(s):
  beta = 0.2
  delta = s.run("delta", s.ctx(delta_alpha=5.0, delta_beta=beta), anchor=s.params["backbone"])
  ft = s.run("finetune", s.ctx())
  w = np.asarray(s.params["target_head"]["w"], np.float64)
  np.testing.assert_allclose(delta[2]["delta_behaviour"], 0.0, atol=1e-12)
  np.testing.assert_allclose(delta[0], ft[0] + 0.5 * beta * np.sum(w * w), rtol=1e-5)


def test_delta_is_the_attention_weighted_feature_distance_to_the_pretrained_network(s):
  alpha, beta = 0.7, 0.1
  rng = np.random.default_rng(2)
  anchor = jax.tree.map(lambda w: w + 0.2 * rng.normal(size=w.shape).astype(np.float32),
                        s.params["backbone"])
  ctx = s.ctx(delta_alpha=alpha, delta_beta=beta)
  loss, _, metrics, _ = s.run("delta", ctx, anchor=anchor)
  f, f0 = _np_features(s, s.params["backbone"]), _np_features(s, anchor)
  labels = s.target["label"]
  # The attention head: the probe solver on the pre-trained features (zeros init: no key).
  head0 = inner.fit_head(dataclasses.replace(ctx.hp.inner, first_order=True),
                         jnp.asarray(f0, jnp.float32), labels, K_TGT, None)
  w0, b0 = np.asarray(head0["w"], np.float64), np.asarray(head0["b"], np.float64)
  base = _np_ce(f0 @ w0 + b0, labels)
  rise = np.array([_np_ce((f0 * (np.arange(FEAT) != j)) @ w0 + b0, labels) - base
                   for j in range(FEAT)])
  attention = FEAT * np.exp(rise - rise.max()) / np.exp(rise - rise.max()).sum()
  behaviour = np.sum(attention * np.mean((f - f0) ** 2, axis=0))
  assert behaviour > 1e-3 and np.ptp(attention) > 1e-3             # non-trivial weights
  head = s.params["target_head"]
  w = np.asarray(head["w"], np.float64)
  ce = _np_ce(f @ w + np.asarray(head["b"]), labels)
  np.testing.assert_allclose(metrics["delta_behaviour"], behaviour, rtol=1e-4)
  np.testing.assert_allclose(loss, ce + alpha * behaviour + 0.5 * beta * np.sum(w * w),
                             rtol=1e-4)


def test_delta_without_anchor_fails(s):
  with pytest.raises(ValueError, match="anchor"):
    s.run("delta", s.ctx(), anchor=None)


def test_co_tuning_fits_the_source_head_to_the_pretrained_class_relationship(s):
  weight = 0.6
  ctx = s.ctx(co_tuning_weight=weight)
  anchor = _anchor(s, "co_tuning", ctx)
  f = _np_features(s, s.params["backbone"])
  labels = s.target["label"]

  def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
  src = s.params["source_head"]
  # The relationship of the pre-trained model: per target class, the mean source softmax.
  p0 = softmax(f @ np.asarray(src["w"], np.float64) + np.asarray(src["b"]))   # [N, K_s]
  relation = np.stack([p0[labels == c].mean(axis=0) for c in range(K_TGT)])
  np.testing.assert_allclose(anchor["relationship"], relation, rtol=1e-5)
  np.testing.assert_allclose(relation.sum(axis=1), 1.0, rtol=1e-6)
  loss, _, metrics, grads = s.run("co_tuning", ctx, anchor=anchor)
  aux = -np.mean(np.sum(relation[labels] * np.log(p0), axis=1))
  head = s.params["target_head"]
  ce = _np_ce(f @ np.asarray(head["w"], np.float64) + np.asarray(head["b"]), labels)
  np.testing.assert_allclose(metrics["co_tuning_source_loss"], aux, rtol=1e-5)
  np.testing.assert_allclose(loss, ce + weight * aux, rtol=1e-5)
  assert _max_abs(grads["source_head"]) > 1e-4        # the source head is trained too


def test_co_tuning_without_anchor_fails(s):
  with pytest.raises(ValueError, match="anchor"):
    s.run("co_tuning", s.ctx(), anchor=None)
