"""Backbones (merlin_jax/models): shapes, and batch norm in train vs eval mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from merlin_jax.errors import ConfigError
from merlin_jax.models import Backbone, apply_head, init_head, make_backbone
from tests.helpers import numpy_init


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


# ---------------------------------------------------------------------------------------
# SmallCNN.


@pytest.mark.parametrize("hw,channels,widths,feature_dim", [
    (8, 1, (4, 8), 16),
    (28, 3, (4,), 10),
])
def test_small_cnn_feature_shapes(hw, channels, widths, feature_dim):
  backbone = make_backbone(_cfg(name="small_cnn", conv_widths=widths, feature_dim=feature_dim),
                           (2, hw, hw, channels))
  assert isinstance(backbone, Backbone)
  assert backbone.feature_dim == feature_dim
  params, state = numpy_init(backbone, (2, hw, hw, channels), np.random.default_rng(0))
  assert state == {}
  # Each stage halves the resolution; the dense layer sees the flattened last stage.
  side = hw // 2 ** len(widths)
  assert params["Dense_0"]["kernel"].shape == (side * side * widths[-1], feature_dim)
  x = np.random.default_rng(1).normal(size=(3, hw, hw, channels)).astype(np.float32)
  for train in (False, True):
    feats, new_state = backbone.features(params, state, x, train=train)
    assert feats.shape == (3, feature_dim) and feats.dtype == jnp.float32
    assert new_state == {}
    assert np.all(np.asarray(feats) >= 0)          # ReLU features
  logits = apply_head(init_head(None, feature_dim, 5, "zeros"), feats)
  assert logits.shape == (3, 5)


def test_small_cnn_batch_chunks_give_the_same_features_and_gradient():
  """model.conv_batch_chunk (CPU speed, issue 32) convolves slices of the batch: the same
  parameter tree, features and gradient as one convolution, for an uneven split too, and
  batch norm (statistics over the batch) is never sliced."""
  from merlin_jax.models.cnn import batch_chunks
  assert batch_chunks(328, 64) == [(0, 54), (54, 109), (109, 164), (164, 218), (218, 273),
                                   (273, 328)]
  assert batch_chunks(5, 64) == batch_chunks(5, 0) == [(0, 5)]
  shape = (2, 8, 8, 1)
  whole = make_backbone(_cfg(name="small_cnn", conv_widths=(4, 8), feature_dim=6,
                             conv_batch_chunk=0), shape)
  sliced = make_backbone(_cfg(name="small_cnn", conv_widths=(4, 8), feature_dim=6,
                              conv_batch_chunk=3), shape)
  params, state = numpy_init(whole, shape, np.random.default_rng(0))
  params_s, _ = numpy_init(sliced, shape, np.random.default_rng(0))
  assert jax.tree.structure(params) == jax.tree.structure(params_s)
  x = np.random.default_rng(1).normal(size=(10, 8, 8, 1)).astype(np.float32)

  def loss(backbone, p):
    return jnp.sum(jnp.sin(backbone.features(p, state, x, train=True)[0]))
  (v0, g0), (v1, g1) = (jax.value_and_grad(lambda p, b=b: loss(b, p))(params)
                        for b in (whole, sliced))
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
  assert make_backbone(_cfg(name="small_cnn", conv_batch_chunk=-1), shape).module \
      .conv_batch_chunk == (64 if jax.default_backend() == "cpu" else 0)
  bn = make_backbone(_cfg(name="small_cnn", conv_widths=(4,), feature_dim=6, batch_norm=True,
                          conv_batch_chunk=3), shape)
  p_bn, s_bn = numpy_init(bn, shape, np.random.default_rng(0))
  _, new = bn.features(p_bn, s_bn, x, train=True)   # statistics of all 10 images, not of 3
  mean = np.asarray(jax.lax.conv_general_dilated(
      x, p_bn["Conv_0"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + p_bn["Conv_0"]["bias"]).mean((0, 1, 2))
  np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * mean,
                             rtol=1e-4, atol=1e-6)


def test_small_cnn_batch_norm_keeps_state():
  backbone = make_backbone(_cfg(name="small_cnn", conv_widths=(4,), feature_dim=6,
                                batch_norm=True), (2, 8, 8, 1))
  params, state = numpy_init(backbone, (2, 8, 8, 1), np.random.default_rng(0))
  assert set(state) == {"batch_stats"}
  x = np.random.default_rng(1).normal(loc=2.0, size=(4, 8, 8, 1)).astype(np.float32)
  _, new_state = backbone.features(params, state, x, train=True)
  assert not np.allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"],
                         state["batch_stats"]["BatchNorm_0"]["mean"])


def test_unknown_backbone_is_a_config_error():
  with pytest.raises(ConfigError) as err:
    make_backbone(_cfg(name="vgg"), (2, 8, 8, 1))
  assert err.value.key == "model.name"
  assert "model.name" in str(err.value)


# ---------------------------------------------------------------------------------------
# ResNet-18: batch norm through Backbone.features.


@pytest.fixture(scope="module")
def resnet18():
  shape = (4, 16, 16, 3)
  backbone = make_backbone(_cfg(name="resnet18", small_inputs=True), shape)
  params, state = numpy_init(backbone, shape, np.random.default_rng(0))
  x = np.random.default_rng(1).normal(loc=0.5, scale=2.0, size=shape).astype(np.float32)
  # Running averages unlike this batch's statistics, so the two modes must differ.
  rng = np.random.default_rng(2)
  odd_state = jax.tree_util.tree_map_with_path(
      lambda path, v: (v + rng.normal(size=v.shape).astype(v.dtype) if path[-1].key == "mean"
                       else v * rng.uniform(0.2, 5.0, size=v.shape).astype(v.dtype)), state)
  features = jax.jit(backbone.features, static_argnames="train")
  return backbone, params, state, odd_state, x, features


def test_resnet18_features_shape(resnet18):
  backbone, params, state, _, x, features = resnet18
  assert backbone.feature_dim == 512
  feats, _ = features(params, state, x, train=False)
  assert feats.shape == (4, 512) and feats.dtype == jnp.float32
  assert np.all(np.isfinite(feats))


def test_resnet18_train_mode_uses_batch_statistics_and_updates_the_averages(resnet18):
  backbone, params, state, odd_state, x, features = resnet18
  feats_a, new_a = features(params, state, x, train=True)
  feats_b, new_b = features(params, odd_state, x, train=True)
  # Output depends on the batch only, not on the running averages passed in.
  np.testing.assert_allclose(feats_a, feats_b, rtol=1e-5, atol=1e-5)
  # The averages move, every one of them, with the same tree structure.
  assert jax.tree.structure(new_a) == jax.tree.structure(state)
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new_a, state)
  assert all(jax.tree.leaves(moved))
  # Once per call, with momentum 0.9: for the stem's batch norm,
  # mean <- 0.9 mean + 0.1 batch_mean(conv_init(x)), same for the (biased) variance.
  y = jax.lax.conv_general_dilated(x, params["conv_init"]["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  batch_mean = np.asarray(jnp.mean(y, axis=(0, 1, 2)))
  batch_var = np.asarray(jnp.var(y, axis=(0, 1, 2)))
  got = new_b["batch_stats"]["bn_init"]
  old = odd_state["batch_stats"]["bn_init"]
  np.testing.assert_allclose(got["mean"], 0.9 * old["mean"] + 0.1 * batch_mean,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["var"], 0.9 * old["var"] + 0.1 * batch_var, rtol=1e-4,
                             atol=1e-5)
  # Batch statistics are not the running averages: eval mode gives something else.
  feats_eval, _ = features(params, state, x, train=False)
  assert np.abs(np.asarray(feats_eval) - np.asarray(feats_a)).max() > 1e-3


def test_resnet18_eval_mode_uses_running_averages_and_keeps_the_state(resnet18):
  backbone, params, state, odd_state, x, features = resnet18
  feats_a, new_a = features(params, state, x, train=False)
  feats_b, new_b = features(params, odd_state, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, new_a, state)
  jax.tree.map(np.testing.assert_array_equal, new_b, odd_state)
  # Different running averages, different output.
  assert np.abs(np.asarray(feats_a) - np.asarray(feats_b)).max() > 1e-3
  # Per-example in eval mode: a sub-batch gives the same features for its examples.
  feats_sub, _ = features(params, odd_state, x[:2], train=False)
  np.testing.assert_allclose(feats_sub, np.asarray(feats_b)[:2], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# ResNet-50: shapes only, by abstract evaluation (no compute).


@pytest.mark.parametrize("small_inputs,hw", [(False, 32)])
def test_resnet50_shapes(small_inputs, hw):
  shape = (2, hw, hw, 3)
  backbone = make_backbone(_cfg(name="resnet50", small_inputs=small_inputs), shape)
  assert backbone.feature_dim == 2048
  params, state = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros(shape)))
  assert set(state) == {"batch_stats"}
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert 23_000_000 < n_params < 24_000_000       # ResNet-50 without its fc layer: ~23.5M
  feats, new_state = jax.eval_shape(
      lambda p, s: backbone.features(p, s, jnp.zeros(shape), train=True), params, state)
  assert feats.shape == (2, 2048) and feats.dtype == jnp.float32
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
