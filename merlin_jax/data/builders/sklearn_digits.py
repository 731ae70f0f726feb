"""`sklearn_digits`: scikit-learn's 1,797 handwritten 8x8 digits, resized to 28x28x1.

The target of the default pair. Source: `sklearn.datasets.load_digits()` (inside the
scikit-learn wheel; nothing is downloaded). Pixel values 0..16 are scaled to 0..255 and
resized bicubically to 28x28. A fixed class-stratified split (seed 0) gives 'train'
(~1,000; the pool labelled target examples are drawn from) and 'test' (the other ~797;
final evaluation only).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from merlin_jax.data.builders import common

NUM_TRAIN = 1000
# How the stored images were made from the raw 8x8 scans (pixel values 0..255): recorded in
# a model's export, so that `Model.predict` on raw scans applies the same resize (not the
# pipeline's TF bilinear one, which scores 0.5 points lower).
STORED_RESIZE = {"size": 28, "method": "pil_bicubic"}


def load_split_arrays(image_size: int = 28):
  """-> {'train': (images uint8 [N,S,S,1], labels int64 [N]), 'test': (...)}."""
  from sklearn.datasets import load_digits
  d = load_digits()
  labels = d.target.astype(np.int64)                                   # [1797]
  images = np.stack([common.to_uint8_image(x * (255.0 / 16.0), image_size)
                     for x in d.images])                               # [1797, S, S, 1]
  train_idx, test_idx = common.stratified_split(
      labels, test_fraction=1.0 - NUM_TRAIN / len(labels), seed=0)
  return {"train": (images[train_idx], labels[train_idx]),
          "test": (images[test_idx], labels[test_idx])}


class SklearnDigits(common.OfflineBuilder):
  """scikit-learn's handwritten digits (UCI optdigits test set), 28x28x1."""

  def _info(self):
    return common.image_label_info(self, tfds.features.Image(shape=(28, 28, 1)), 10)

  def _split_generators(self, dl_manager):
    del dl_manager
    arrays = load_split_arrays(28)
    return {name: self._generate_examples(*arrays[name]) for name in ("train", "test")}
