"""`caltech256`: Caltech-256 from its `256_ObjectCategories/` folder (manual dir).

Download `256_ObjectCategories.tar` (Caltech DATA, doi:10.22002/D1.20087), extract it into
DIR and run `python -m merlin_jax.data.prepare caltech256 --manual_dir=DIR`. The 256 object
classes `001.ak47 .. 256.toad` are labels 0..255; `257.clutter` is left out (as is usual
for classification). Split (fixed, seed 0, ours): 'train' = 60 random images per class,
'test' = the rest. Images are stored as RGB JPEG of their original size (the pipeline
resizes / crops).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from merlin_jax.data.builders import common
from merlin_jax.errors import DataError

TRAIN_PER_CLASS = 60
PREPARE_HINT = ("extract 256_ObjectCategories.tar into DIR and run `python -m "
                "merlin_jax.data.prepare caltech256 --manual_dir=DIR`")
_EXTS = (".jpg", ".jpeg", ".png")


def find_manual_files(name: str, manual_dir: str | None):
  """-> {'train': [(path, label)], 'test': [...]}."""
  del name
  root = None
  if manual_dir:
    for cand in (os.path.join(manual_dir, "256_ObjectCategories"), manual_dir):
      if os.path.isdir(cand) and any(d.startswith("001.") for d in os.listdir(cand)):
        root = cand
        break
  if root is None:
    raise DataError(f"caltech256: no 256_ObjectCategories/001.* in "
                    f"{manual_dir or '(no manual dir)'}: " + PREPARE_HINT)
  rng = np.random.default_rng(0)
  splits = {"train": [], "test": []}
  classes = sorted(d for d in os.listdir(root) if d[:3].isdigit() and not d.startswith("257."))
  for cls in classes:
    label = int(cls[:3]) - 1
    files = sorted(f for f in os.listdir(os.path.join(root, cls)) if f.lower().endswith(_EXTS))
    order = rng.permutation(len(files))
    for rank, j in enumerate(order):
      split = "train" if rank < TRAIN_PER_CLASS else "test"
      splits[split].append((os.path.join(root, cls, files[j]), label))
  for split in splits:
    splits[split].sort()
  return splits


class Caltech256(common.OfflineBuilder):
  """Caltech-256 (256 classes, clutter excluded) from a manual dir."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = PREPARE_HINT

  def _info(self):
    return common.image_label_info(
        self, tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"), 256)

  def _split_generators(self, dl_manager):
    files = find_manual_files("caltech256", common.manual_dir(dl_manager))
    return {s: self._generate_examples(files[s]) for s in ("train", "test")}

  def _generate_examples(self, items):
    from PIL import Image
    for path, label in items:
      with Image.open(path) as img:   # some Caltech-256 images are grayscale or CMYK
        image = np.asarray(img.convert("RGB"))
      yield os.path.relpath(path, os.path.dirname(os.path.dirname(path))), {
          "image": image, "label": label}
