"""`usps`: the USPS handwritten digits (7,291 train / 2,007 test, 16x16 gray), manual dir.

Not installable from any package registry here, so it is a manual-dir builder over either
of the two common distributions (put one in the manual dir):

* `usps.h5` (the Kaggle "bistaumanga/usps-dataset" layout): groups 'train' and 'test', each
  with 'data' [N, 256] floats in [0, 1] and 'target' [N] digits 0-9;
* `usps.bz2` + `usps.t.bz2` (LIBSVM's multiclass page): lines `label idx:value ...` with
  labels 1-10 meaning digits 0-9 and values in [-1, 1].

Prepare once: `python -m merlin_jax.data.prepare usps --manual_dir=DIR_WITH_usps.h5`.
Features: {'image': uint8 (16, 16, 1), 'label': ClassLabel(10)} (the pipeline resizes).
"""

from __future__ import annotations

import bz2
import os

import numpy as np
import tensorflow_datasets as tfds

from merlin_jax.data.builders import common
from merlin_jax.errors import DataError

PREPARE_HINT = ("put usps.h5 (Kaggle bistaumanga/usps-dataset) or LIBSVM's usps.bz2 + "
                "usps.t.bz2 in DIR and run `python -m merlin_jax.data.prepare usps "
                "--manual_dir=DIR`")


def find_manual_files(name: str, manual_dir: str | None):
  del name
  if manual_dir:
    h5 = os.path.join(manual_dir, "usps.h5")
    if os.path.exists(h5):
      return {"h5": h5}
    tr, te = os.path.join(manual_dir, "usps.bz2"), os.path.join(manual_dir, "usps.t.bz2")
    if os.path.exists(tr) and os.path.exists(te):
      return {"train": tr, "test": te}
  raise DataError(f"usps: no usps.h5 or usps.bz2/usps.t.bz2 in {manual_dir or '(no manual dir)'}: "
                  + PREPARE_HINT)


def read_libsvm(path: str):
  """LIBSVM usps(.t).bz2 -> (uint8 [N,16,16,1], int64 labels 0-9)."""
  opener = bz2.open if path.endswith(".bz2") else open
  images, labels = [], []
  with opener(path, "rt") as f:
    for line in f:
      parts = line.split()
      if not parts:
        continue
      x = np.full(256, -1.0, np.float32)
      for item in parts[1:]:
        k, v = item.split(":")
        x[int(k) - 1] = float(v)
      images.append(x)
      labels.append(int(float(parts[0])) - 1)
  x = (np.stack(images) + 1.0) * 127.5
  return _to_uint8(x), np.asarray(labels, np.int64)


def read_h5(path: str):
  import h5py
  out = {}
  with h5py.File(path, "r") as f:
    for split in ("train", "test"):
      x = np.asarray(f[split]["data"], np.float32)
      if x.max() <= 1.0:
        x = x * 255.0
      out[split] = (_to_uint8(x), np.asarray(f[split]["target"], np.int64))
  return out


def _to_uint8(x):
  return np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 16, 16, 1)


class Usps(common.OfflineBuilder):
  """USPS digits from a manual dir (usps.h5 or LIBSVM usps.bz2)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = PREPARE_HINT

  def _info(self):
    return common.image_label_info(self, tfds.features.Image(shape=(16, 16, 1)), 10)

  def _split_generators(self, dl_manager):
    files = find_manual_files("usps", common.manual_dir(dl_manager))
    arrays = (read_h5(files["h5"]) if "h5" in files else
              {s: read_libsvm(files[s]) for s in ("train", "test")})
    return {s: self._generate_examples(*arrays[s]) for s in ("train", "test")}
