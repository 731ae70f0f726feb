"""The probe's pass over the target pool runs in sharded chunks: same head, same accuracy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from merlin_jax import inner, losses
from merlin_jax.runtime import sharding
from merlin_jax.data.interface import TransferData
from merlin_jax.evaluate import Evaluator
from merlin_jax.methods import Context, Hyper, get_method
from merlin_jax.models import apply_head, make_backbone
from tests.helpers import numpy_init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW, K = 8, 3
N_POOL, N_VAL = 30, 13


def _setup(inner_cfg):
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", conv_widths=(4, 8), feature_dim=16,
                                       batch_norm=True))
  backbone = make_backbone(cfg, (1, HW, HW, 1))
  rng = np.random.default_rng(0)
  bb, state = numpy_init(backbone, (1, HW, HW, 1), rng)
  params = {"backbone": bb}
  pool = {"inputs": rng.uniform(size=(N_POOL, HW, HW, 1)).astype(np.float32),
          "label": (np.arange(N_POOL) % K).astype(np.int32)}
  val = {"inputs": rng.uniform(size=(N_VAL, HW, HW, 1)).astype(np.float32),
         "label": (np.arange(N_VAL) % K).astype(np.int32)}
  ctx = Context(backbone, Hyper(num_source_classes=K, num_target_classes=K, inner=inner_cfg))
  return ctx, params, state, pool, val


def _evaluator(ctx, pool, val, eval_batch_size):
  config = ml_collections.ConfigDict(dict(eval=dict(batch_size=eval_batch_size, probe_steps=0,
                                                    probe_lr=0.0)))
  data = TransferData(source=None, target_train=pool, target_val=val,
                      num_source_classes=K, num_target_classes=K)
  mesh = sharding.make_mesh()
  return Evaluator(config, get_method("merlin"), ctx, mesh, data,
                   sharding.replicate(mesh, pool), seed=0), mesh


@pytest.mark.parametrize("inner_cfg", [
    inner.InnerConfig(kind="gd", steps=10, lr=1.0, step_size="normalized"),
    inner.InnerConfig(kind="ridge", ridge_lambda=0.5),
], ids=["gd", "ridge"])
def test_chunked_probe_equals_the_whole_pool_probe(inner_cfg):
  ctx, params, state, pool, val = _setup(inner_cfg)
  # Unchunked reference: every pool row through the backbone at once, then the solver.
  f = ctx.backbone.features(params["backbone"], state, pool["inputs"], train=False)[0]
  ev, _ = _evaluator(ctx, pool, val, 64)
  ref = inner.fit_head(ev.probe_inner, f, pool["label"], K, ev.probe_key)
  val_f = ctx.backbone.features(params["backbone"], state, val["inputs"], train=False)[0]
  logits = apply_head(ref, val_f)
  ref_acc = float(losses.accuracy(logits, val["label"]))
  ref_loss = float(losses.softmax_cross_entropy(logits, val["label"]))
  for batch in (64, 30, 8, 7):   # one chunk, exact, 4 chunks with an overlapping last one, ...
    ev, _ = _evaluator(ctx, pool, val, batch)
    head = ev.target_head(params, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 head, ref)
    m = ev.target_val(params, state)
    assert m["target_val_accuracy"] == pytest.approx(ref_acc, abs=1e-6)
    assert m["target_val_loss"] == pytest.approx(ref_loss, rel=1e-5)


def test_chunked_probe_on_four_devices_shards_the_chunks():
  """4 fake devices (a subprocess): the same head as 1 device, and the compiled probe's
  working memory per device is smaller than on 1 device."""
  script = textwrap.dedent(f"""
      import os, sys, json
      sys.path.insert(0, {ROOT!r})
      import jax, numpy as np
      from tests import test_chunked_eval as t
      from merlin_jax import inner
      cfg = inner.InnerConfig(kind="gd", steps=10, lr=1.0, step_size="normalized")
      ctx, params, state, pool, val = t._setup(cfg)
      out = {{}}
      for n in (1, 4):
        devs = jax.devices()[:n]
        import merlin_jax.runtime.sharding as sh
        from jax.sharding import Mesh
        orig = sh.make_mesh
        sh.make_mesh = lambda *a, **k: Mesh(np.asarray(devs).reshape(n, 1), ("data", "model"))
        ev, mesh = t._evaluator(ctx, pool, val, 8)
        sh.make_mesh = orig
        head = ev.target_head(params, state)
        mem = ev._fit_probe.lower(params, state, ev.target_pool).compile().memory_analysis()
        out[n] = dict(w=np.asarray(head["w"]).tolist(), temp=int(mem.temp_size_in_bytes),
                      acc=ev.target_val(params, state)["target_val_accuracy"])
      print("RESULT", json.dumps(out))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  np.testing.assert_allclose(out["4"]["w"], out["1"]["w"], rtol=1e-4, atol=1e-6)
  assert out["4"]["acc"] == pytest.approx(out["1"]["acc"])
  assert out["4"]["temp"] < out["1"]["temp"]
