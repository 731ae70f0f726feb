"""A tiny synthetic transfer pair: `data.source.name = data.target.name = 'synthetic'`.

For smoke tests and the CLI/reliability tests (no TFDS, no TensorFlow): 8x8x1 images,
source = 4 class means + noise, target = 3 related class means + noise. The pair itself is
fixed (numpy seed 1234); `seed` draws D_t / target_val. Same interface as
`merlin_jax.data.pipeline.TransferData`. The source batch of step s is a pure function of
(seed, s), so runs resume exactly.

The head sizes come from the config (`data.num_source_classes`, `data.num_target_classes`),
the labels from the dataset (4 source, 3 target classes): a config whose head is too small
for the labels is caught by `train.check_data_fits` like any other dataset.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from merlin_jax.errors import ConfigError

NAME = "synthetic"
SOURCE_CLASSES = 4
TARGET_CLASSES = 3
IMAGE_SHAPE = (8, 8, 1)
NUM_SOURCE = 512
NUM_TEST = 150


def _make(rng, means, n, noise=0.6):
  labels = rng.integers(0, means.shape[0], n).astype(np.int32)
  images = means[labels] + noise * rng.standard_normal((n,) + means.shape[1:])
  return {"image": images.astype(np.float32), "label": labels}


@dataclasses.dataclass
class SyntheticSource:
  images: np.ndarray
  labels: np.ndarray
  seed: int
  process_index: int = 0
  process_count: int = 1

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  def batches(self, start_step, global_batch_size):
    if global_batch_size % self.process_count:
      raise ConfigError("batch_size", f"{global_batch_size} is not divisible by the "
                        f"{self.process_count} processes")
    if global_batch_size > len(self.labels):
      raise ConfigError("batch_size", f"{global_batch_size} exceeds the {len(self.labels)} "
                        "examples of the synthetic source")
    step = start_step
    local = global_batch_size // self.process_count
    while True:
      rng = np.random.default_rng((self.seed, step))
      idx = rng.choice(len(self.labels), global_batch_size, replace=False)
      idx = idx[self.process_index * local:(self.process_index + 1) * local]
      yield {"image": self.images[idx], "label": self.labels[idx]}
      step += 1


@dataclasses.dataclass
class SyntheticTransferData:
  source: SyntheticSource | None
  target_train: dict
  target_val: dict
  target_test: dict
  num_source_classes: int = SOURCE_CLASSES
  num_target_classes: int = TARGET_CLASSES
  image_shape: tuple = IMAGE_SHAPE
  process_index: int = 0
  process_count: int = 1

  def eval_sets(self):
    return ["target_test", "source_test"] if self.source is not None else ["target_test"]

  def eval_batches(self, name, batch_size):
    if name not in self.eval_sets():
      raise KeyError(f"unknown eval set {name!r}; have {self.eval_sets()}")
    arrays = self.target_test if name == "target_test" else {
        "image": self.source.images[:64], "label": self.source.labels[:64]}
    n = len(arrays["label"])
    for s in range(0, n, batch_size):
      img, lab = arrays["image"][s:s + batch_size], arrays["label"][s:s + batch_size]
      pad = batch_size - len(lab)
      yield {"image": np.pad(img, [(0, pad), (0, 0), (0, 0), (0, 0)]),
             "label": np.pad(lab, (0, pad)),
             "mask": np.pad(np.ones(len(lab), np.float32), (0, pad))}


def is_synthetic(data_cfg) -> bool:
  return data_cfg.source.name == NAME or data_cfg.target.name == NAME


def load_synthetic(data_cfg, seed, *, need_source=True, process_index=0, process_count=1):
  """The synthetic pair as a TransferData (both names must be 'synthetic')."""
  for key in ("source", "target"):   # (neither: a test's stand-in for another dataset)
    if is_synthetic(data_cfg) and data_cfg[key].name != NAME:
      raise ConfigError(f"data.{key}.name", f"{data_cfg[key].name!r}: the synthetic pair needs "
                        f"data.source.name = data.target.name = {NAME!r}")
  if tuple((data_cfg.image_size, data_cfg.image_size, data_cfg.channels)) != IMAGE_SHAPE:
    raise ConfigError("data.image_size", f"the synthetic pair is 8x8x1; set data.image_size=8 "
                      f"and data.channels=1 (got {data_cfg.image_size}, {data_cfg.channels})")
  if data_cfg.num_source_classes != SOURCE_CLASSES and need_source:
    raise ConfigError("data.num_source_classes", f"{data_cfg.num_source_classes}, but dataset "
                      f"'synthetic' has {SOURCE_CLASSES} source classes")
  n_tr, n_val = int(data_cfg.target.num_train), int(data_cfg.target.num_val)
  if n_tr < 0 or n_val < 0:
    raise ConfigError("data.target.num_train", "num_train and num_val must be >= 0")
  rng = np.random.default_rng(1234)   # the pair itself is fixed; `seed` drives sampling
  src_means = rng.standard_normal((SOURCE_CLASSES,) + IMAGE_SHAPE)
  tgt_means = src_means[:TARGET_CLASSES] + 0.5 * rng.standard_normal(
      (TARGET_CLASSES,) + IMAGE_SHAPE)
  source = _make(rng, src_means, NUM_SOURCE)
  pick = np.random.default_rng(seed)
  pool = _make(pick, tgt_means, n_tr + n_val)
  return SyntheticTransferData(
      source=SyntheticSource(source["image"], source["label"], seed, process_index,
                             process_count) if need_source else None,
      target_train={k: v[:n_tr] for k, v in pool.items()},
      target_val={k: v[n_tr:] for k, v in pool.items()},
      target_test=_make(rng, tgt_means, NUM_TEST),
      num_source_classes=int(data_cfg.num_source_classes),
      num_target_classes=int(data_cfg.num_target_classes),
      process_index=process_index, process_count=process_count)
