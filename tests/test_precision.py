"""Mixed precision (config `model.dtype`) and uint8 pixels: what bf16 changes and what not."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from merlin_jax import inner, train
from merlin_jax.config_base import load_config
from merlin_jax.errors import ConfigError
from merlin_jax.methods import Context, Hyper, get_method
from merlin_jax.models import Backbone, make_backbone, resnet
from tests.helpers import ROOT, numpy_init, tiny_config

HW, K_SRC, K_TGT = 8, 4, 3


def _small_resnet(dtype):
  module = resnet.ResNet(stage_sizes=(1, 1), block_cls=resnet.ResNetBlock, num_filters=8,
                         small_inputs=True, dtype=dtype)
  return Backbone(module=module, feature_dim=16)


def _meta_grads(dtype, params, state, batch, key):
  backbone = _small_resnet(dtype)
  hp = Hyper(num_source_classes=K_SRC, num_target_classes=K_TGT,
             inner=inner.InnerConfig(kind="gd", steps=5, lr=1.0, step_size="normalized"),
             split_train_size=12, split_val_size=12)
  objective = get_method("merlin").objective
  fn = jax.jit(jax.value_and_grad(
      lambda p, b: objective(Context(backbone, hp), p, state, b, key, None), has_aux=True))
  return fn(params, batch)


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(np.float64)


def test_bf16_meta_gradient_points_like_float32():
  rng = np.random.default_rng(0)
  bb, state = numpy_init(_small_resnet(jnp.float32), (2, HW, HW, 3), rng)
  head = lambda k: {"w": (rng.normal(size=(16, k)) / 4).astype(np.float32),
                    "b": np.zeros(k, np.float32)}
  params = {"backbone": bb, "source_head": head(K_SRC), "target_head": head(K_TGT)}
  batch = {"source": {"inputs": rng.uniform(size=(16, HW, HW, 3)).astype(np.float32),
                      "label": np.arange(16) % K_SRC},
           "target": {"inputs": rng.uniform(size=(30, HW, HW, 3)).astype(np.float32),
                      "label": np.arange(30) % K_TGT}}
  key = jax.random.key(3)
  (l32, (s32, _)), g32 = _meta_grads(jnp.float32, params, state, batch, key)
  (l16, (s16, m16)), g16 = _meta_grads(jnp.bfloat16, params, state, batch, key)
  # Parameters' gradients, batch-norm statistics, losses and the inner solve stay float32.
  for tree in (g16, s16, m16):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert l16.dtype == jnp.float32
  np.testing.assert_allclose(l16, l32, rtol=0.05)
  for part in ("backbone", "source_head"):
    a, b = _flat(g32[part]), _flat(g16[part])
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cos >= 0.99, (part, cos)


@pytest.mark.parametrize("name,extra", [
    ("small_cnn", dict(conv_widths=(4, 8), feature_dim=16, batch_norm=True)),
    ("resnet18", dict(small_inputs=True)),
])
def test_bf16_features_are_float32_and_params_stay_float32(name, extra):
  cfg = ml_collections.ConfigDict(dict(name=name, dtype="bfloat16", **extra))
  backbone = make_backbone(cfg, (1, HW, HW, 1))
  params, state = backbone.init(jax.random.key(0), jnp.zeros((1, HW, HW, 1)))
  assert {x.dtype for x in jax.tree.leaves((params, state))} == {jnp.dtype(jnp.float32)}
  x = np.random.default_rng(0).uniform(size=(4, HW, HW, 1)).astype(np.float32)
  f, new_state = backbone.features(params, state, x, train=True)
  assert f.dtype == jnp.float32 and f.shape == (4, backbone.feature_dim)
  assert {x.dtype for x in jax.tree.leaves(new_state)} <= {jnp.dtype(jnp.float32)}


def test_unknown_dtype_is_a_config_error():
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", dtype="float16"))
  with pytest.raises(ConfigError, match="model.dtype"):
    make_backbone(cfg, (1, HW, HW, 1))


def test_uint8_pixels_give_the_features_of_their_float32_values():
  # The pipeline's scaling (data/sources.py): k -> float32(k) * float32(1/255), bitwise.
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", conv_widths=(4,), feature_dim=8))
  backbone = make_backbone(cfg, (1, HW, HW, 1))
  params, state = numpy_init(backbone, (1, HW, HW, 1), np.random.default_rng(0))
  u8 = np.random.default_rng(1).integers(0, 256, size=(5, HW, HW, 1)).astype(np.uint8)
  as_float = u8.astype(np.float32) * np.float32(1.0 / 255.0)
  fn = jax.jit(lambda x: backbone.features(params, state, x, train=False)[0])
  np.testing.assert_array_equal(fn(u8), fn(as_float))


def test_config_defaults():
  dtype = lambda spec: load_config(f"{ROOT}/configs/{spec}").model.dtype
  assert dtype("digits.py") == "float32"          # offline CPU configs: unchanged numbers
  assert dtype("synthetic.py") == "float32"
  assert dtype("food_cub.py") == "bfloat16"       # ImageNet-scale pairs
  assert dtype("imagenet_cars.py") == "bfloat16"
  assert dtype("glue_mrpc.py") == "bfloat16"      # BERT on GLUE


def test_a_short_bf16_run_trains(tmp_path):
  cfg = tiny_config("merlin", total_steps=40, **{"eval.every": 20,
                                                           "model.dtype": "bfloat16",
                                                           "optimizer.lr": 3e-3})
  final = train.train_and_evaluate(cfg, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [m["loss"] for m in lines if "loss" in m]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
  assert final["target_test_accuracy"] > 0.5     # 3 classes: chance is 1/3


@pytest.mark.parametrize("name", ["merlin", "joint"])
def test_a_uint8_target_pool_gives_the_float32_pool_objective(name):
  """The pool kept in uint8 is scaled before it meets the float source batch: the objective
  and its gradient are bitwise those of the float32 pool."""
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", conv_widths=(4,), feature_dim=8))
  backbone = make_backbone(cfg, (1, HW, HW, 1))
  rng = np.random.default_rng(0)
  bb, state = numpy_init(backbone, (1, HW, HW, 1), rng)
  head = lambda k: {"w": (rng.normal(size=(8, k)) / 3).astype(np.float32),
                    "b": np.zeros(k, np.float32)}
  params = {"backbone": bb, "source_head": head(K_SRC), "target_head": head(K_TGT)}
  u8 = rng.integers(0, 256, size=(20, HW, HW, 1)).astype(np.uint8)
  source = {"inputs": rng.uniform(size=(6, HW, HW, 1)).astype(np.float32),
            "label": np.arange(6) % K_SRC}
  labels = np.arange(20) % K_TGT
  hp = Hyper(num_source_classes=K_SRC, num_target_classes=K_TGT,
             inner=inner.InnerConfig(kind="gd", steps=3, lr=1.0, step_size="normalized"),
             split_train_size=8, split_val_size=8)
  objective = get_method(name).objective
  fn = jax.jit(jax.value_and_grad(
      lambda p, b: objective(Context(backbone, hp), p, state, b, jax.random.key(1), None)[0]))
  pools = [u8, u8.astype(np.float32) * np.float32(1.0 / 255.0)]
  (la, ga), (lb, gb) = (fn(params, {"source": source, "target": {"inputs": x, "label": labels}})
                        for x in pools)
  assert float(la) == float(lb)
  jax.tree.map(np.testing.assert_array_equal, ga, gb)


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_bert_in_bf16_keeps_float32_params_and_features_close(pooling):
  arch = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=16)
  rng = np.random.default_rng(0)
  inputs = {"input_ids": rng.integers(0, 50, size=(3, 10)).astype(np.int32),
            "token_type_ids": np.zeros((3, 10), np.int32),
            "attention_mask": np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7],
                                       np.int32)}
  make = lambda dtype: make_backbone(ml_collections.ConfigDict(dict(
      name="bert", hf_dir="", bert=arch, pooling=pooling, dtype=dtype)), inputs)
  b32, b16 = make("float32"), make("bfloat16")
  params, state = b32.init(jax.random.key(0), inputs)
  assert {x.dtype for x in jax.tree.leaves(b16.init(jax.random.key(0), inputs)[0])} == {
      jnp.dtype(jnp.float32)}
  f32 = b32.features(params, state, inputs, train=False)[0]
  f16 = b16.features(params, state, inputs, train=False)[0]
  assert f16.dtype == jnp.float32
  np.testing.assert_allclose(f16, f32, atol=0.1)
  cos = np.sum(f16 * f32, -1) / (np.linalg.norm(f16, axis=-1) * np.linalg.norm(f32, axis=-1))
  assert np.all(cos > 0.99), cos
