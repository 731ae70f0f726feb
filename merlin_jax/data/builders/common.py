"""Small helpers shared by the builders: stratified splits and image resizing."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, num_test_per_class: int | None = None, *,
                     test_fraction: float | None = None, seed: int = 0):
  """A deterministic class-stratified train/test split of `labels` -> (train_idx, test_idx).

  Either `num_test_per_class` examples of every class or round(test_fraction * n_c) go to
  test. Indices are returned sorted, so the written dataset order is the source order.
  The seed is fixed per builder (not the experiment seed): the split is part of the data.
  """
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    k = (num_test_per_class if num_test_per_class is not None
         else int(round(test_fraction * len(idx))))
    k = min(k, len(idx))
    test.append(idx[:k])
    train.append(idx[k:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def to_uint8_image(pixels: np.ndarray, side: int) -> np.ndarray:
  """[h, w] float/uint8 in [0, 255] -> [side, side, 1] uint8, bicubic-resized with PIL."""
  from PIL import Image
  img = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")
  if img.size != (side, side):
    img = img.resize((side, side), Image.BICUBIC)
  return np.asarray(img, np.uint8)[:, :, None]


def _offline_builder_base():
  import tensorflow_datasets as tfds

  class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder whose `code_path` is the module file.

    TFDS 4.9's default `code_path` needs the `importlib_resources` backport, which pip does
    not install on Python >= 3.9; `download_and_prepare` reads it (for checksums), so
    without this override our builders could not build in the project's venv.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      import sys
      from etils import epath
      return epath.Path(sys.modules[cls.__module__].__file__)

  return OfflineBuilder


OfflineBuilder = _offline_builder_base()
