"""A tiny synthetic transfer pair for fast tests of the training program.

Same interface as `merlin_jax.data.pipeline.TransferData`: source = class means + noise
with a 'shortcut' pixel, target = related class means. Deterministic by seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _make(rng, means, n, noise=0.6):
  labels = rng.integers(0, means.shape[0], n).astype(np.int32)
  images = means[labels] + noise * rng.standard_normal((n,) + means.shape[1:])
  return {"image": images.astype(np.float32), "label": labels}


@dataclasses.dataclass
class FakeSource:
  images: np.ndarray
  labels: np.ndarray
  seed: int
  process_index: int = 0
  process_count: int = 1

  def batches(self, start_step, global_batch_size):
    step = start_step
    local = global_batch_size // self.process_count
    while True:
      rng = np.random.default_rng((self.seed, step))
      idx = rng.choice(len(self.labels), global_batch_size, replace=False)
      idx = idx[self.process_index * local:(self.process_index + 1) * local]
      yield {"image": self.images[idx], "label": self.labels[idx]}
      step += 1


@dataclasses.dataclass
class FakeTransferData:
  source: FakeSource | None
  target_train: dict
  target_val: dict
  target_test: dict
  num_source_classes: int = 4
  num_target_classes: int = 3
  image_shape: tuple = (8, 8, 1)

  def eval_sets(self):
    return ["target_test", "source_test"] if self.source is not None else ["target_test"]

  def eval_batches(self, name, batch_size):
    arrays = self.target_test if name == "target_test" else {
        "image": self.source.images[:64], "label": self.source.labels[:64]}
    n = len(arrays["label"])
    for s in range(0, n, batch_size):
      img, lab = arrays["image"][s:s + batch_size], arrays["label"][s:s + batch_size]
      pad = batch_size - len(lab)
      yield {"image": np.pad(img, [(0, pad), (0, 0), (0, 0), (0, 0)]),
             "label": np.pad(lab, (0, pad)),
             "mask": np.pad(np.ones(len(lab), np.float32), (0, pad))}


def load_fake(data_cfg, seed, *, need_source=True, process_index=0, process_count=1):
  rng = np.random.default_rng(1234)   # the pair itself is fixed; `seed` drives sampling
  src_means = rng.standard_normal((4, 8, 8, 1))
  tgt_means = src_means[:3] + 0.5 * rng.standard_normal((3, 8, 8, 1))
  source = _make(rng, src_means, 512)
  pick = np.random.default_rng(seed)
  pool = _make(pick, tgt_means, data_cfg.target.num_train + data_cfg.target.num_val)
  n_tr = data_cfg.target.num_train
  return FakeTransferData(
      source=FakeSource(source["image"], source["label"], seed, process_index, process_count)
      if need_source else None,
      target_train={k: v[:n_tr] for k, v in pool.items()},
      target_val={k: v[n_tr:] for k, v in pool.items()},
      target_test=_make(rng, tgt_means, 150))


def tiny_config(method="merlin", **overrides):
  """A locked-shape config for the fake pair: runs a step in well under a second."""
  from merlin_jax.config_base import base_config
  c = base_config()
  c.method = method
  c.total_steps = 10
  c.batch_size = 16
  c.data.image_size = 8
  c.data.num_source_classes = 4
  c.data.num_target_classes = 3
  c.data.target.num_train = 40
  c.data.target.num_val = 20
  c.split.train_size = 20
  c.split.val_size = 20
  c.inner.steps = 3
  c.model.conv_widths = (4, 8)
  c.model.feature_dim = 16
  c.eval.every = 5
  c.eval.batch_size = 64
  c.checkpoint_every = 5
  c.log_every = 1
  c.pretrained.steps = 4
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c
