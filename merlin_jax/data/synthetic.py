"""A tiny synthetic transfer pair: `data.source.name = data.target.name = 'synthetic'`.

For smoke tests and the CLI/reliability tests (no TFDS, no TensorFlow): 8x8x1 images,
source = 4 class means + noise, target = 3 related class means + noise. The pair itself is
fixed (numpy seed 1234); `seed` draws D_t / target_val. Returns an
`interface.TransferData` like every other dataset. The source batch of step s is a pure
function of (seed, s), so runs resume exactly.

The head sizes come from the config (`data.num_source_classes`, `data.num_target_classes`),
the labels from the dataset (4 source, 3 target classes): a config whose head is too small
for the labels is caught by `train.check_data_fits` like any other dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from merlin_jax.data.interface import EvalSet, TransferData, local_batch_size
from merlin_jax.errors import ConfigError

NAME = "synthetic"
SOURCE_CLASSES = 4
TARGET_CLASSES = 3
IMAGE_SHAPE = (8, 8, 1)
NUM_SOURCE = 512
NUM_TEST = 150


def make_examples(rng, means, n, noise=0.6):
  """n examples {'inputs': f32 [n, 8, 8, 1], 'label': i32 [n]}: a random class mean + noise."""
  labels = rng.integers(0, means.shape[0], n).astype(np.int32)
  images = means[labels] + noise * rng.standard_normal((n,) + means.shape[1:])
  return {"inputs": images.astype(np.float32), "label": labels}


@dataclasses.dataclass
class SyntheticSource:
  """The synthetic source (an interface.SourceStream): batch s draws from (seed, s)."""

  images: np.ndarray
  labels: np.ndarray
  seed: int
  process_index: int = 0
  process_count: int = 1

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    local = local_batch_size(global_batch_size, self.process_count, "batch_size")
    if global_batch_size > len(self.labels):
      raise ConfigError("batch_size", f"{global_batch_size} exceeds the {len(self.labels)} "
                        "examples of the synthetic source")
    return self._batches(start_step, global_batch_size, local)

  def _batches(self, step: int, global_batch_size: int, local: int) -> Iterator[dict]:
    while True:
      rng = np.random.default_rng((self.seed, step))
      idx = rng.choice(len(self.labels), global_batch_size, replace=False)
      idx = idx[self.process_index * local:(self.process_index + 1) * local]
      yield {"inputs": self.images[idx], "label": self.labels[idx]}
      step += 1


def is_synthetic(data_cfg) -> bool:
  """Whether config.data names the synthetic pair (as source or target)."""
  return data_cfg.source.name == NAME or data_cfg.target.name == NAME


def load_synthetic(data_cfg, seed: int, *, need_source: bool = True, process_index: int = 0,
                   process_count: int = 1) -> TransferData:
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
  source = make_examples(rng, src_means, NUM_SOURCE)
  pick = np.random.default_rng(seed)
  pool = make_examples(pick, tgt_means, n_tr + n_val)
  evals = {"target_test": EvalSet(arrays=make_examples(rng, tgt_means, NUM_TEST))}
  stream = None
  if need_source:
    stream = SyntheticSource(source["inputs"], source["label"], seed, process_index,
                             process_count)
    evals["source_test"] = EvalSet(arrays={k: v[:64] for k, v in source.items()})
  return TransferData(
      source=stream,
      target_train={k: v[:n_tr] for k, v in pool.items()},
      target_val={k: v[n_tr:] for k, v in pool.items()},
      num_source_classes=int(data_cfg.num_source_classes),
      num_target_classes=int(data_cfg.num_target_classes),
      process_index=process_index, process_count=process_count, eval_data=evals)
