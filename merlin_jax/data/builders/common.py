"""Small helpers shared by the builders: stratified splits, image resizing, the manual dir,
the {'image', 'label'} features, and the builders' base class."""

from __future__ import annotations

import os
import sys

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


def manual_dir(dl_manager) -> str | None:
  """The manual dir if the user gave one that exists (TFDS raises if it's missing)."""
  try:
    d = os.fspath(dl_manager.manual_dir)
  except Exception:  # pylint: disable=broad-except  (no manual dir: use default locations)
    return None
  return d if os.path.isdir(d) else None


def image_label_info(builder, image, num_classes: int):
  """builder's DatasetInfo for {'image': `image` (a tfds Image feature), 'label':
  ClassLabel(num_classes)}, described by the docstring of the builder's module."""
  import tensorflow_datasets as tfds
  return builder.dataset_info_from_configs(
      description=sys.modules[type(builder).__module__].__doc__,
      features=tfds.features.FeaturesDict({
          "image": image,
          "label": tfds.features.ClassLabel(num_classes=num_classes),
      }),
      supervised_keys=("image", "label"),
  )


def _offline_builder_base():
  import tensorflow_datasets as tfds

  class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder whose `code_path` is the module file (and which generates
    {'image', 'label'} examples from arrays unless a builder says otherwise).

    TFDS 4.9's default `code_path` needs the `importlib_resources` backport, which pip does
    not install on Python >= 3.9; `download_and_prepare` reads it (for checksums), so
    without this override our builders could not build in the project's venv.
    """

    # Every offline builder is at 1.0.0; one whose output changes sets its own VERSION.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      from etils import epath
      return epath.Path(sys.modules[cls.__module__].__file__)

    def _generate_examples(self, images, labels):
      """(key, {'image', 'label'}) of in-memory images, shaped as the 'image' feature (the
      default: builders of other examples override it)."""
      shape = self.info.features["image"].shape
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image.reshape(shape), "label": int(label)}

  return OfflineBuilder


OfflineBuilder = _offline_builder_base()
