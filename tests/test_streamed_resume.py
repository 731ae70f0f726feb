"""Exact resume of streamed sources (merlin_jax/data/sources.py).

A tiny image set (random sizes, random pixels, 4 classes) is written once as real TFDS files
in both formats: array_record (read by index: `RandomAccessSource`) and tfrecord (read in
sequence: `StreamingSource`). No mock data: `tfds.testing.mock_data`'s data source cannot
serve several records at once in this TFDS version (its `__getitems__` mock is broken).
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from merlin_jax.config_base import base_config
from merlin_jax.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")

from merlin_jax import data  # noqa: E402
from merlin_jax.data import prepare, tfds_io  # noqa: E402
from merlin_jax.data.preprocess import eval_image  # noqa: E402
from merlin_jax.data.sources import (EpochOrder, RandomAccessSource,  # noqa: E402
                                     StreamingSource)
from tests.helpers import write_fashion_idx

NAME = "resume_images"
NUM_TRAIN, NUM_CLASSES, SIZE = 40, 4, 16


def write_dataset(data_dir: str, file_format: str) -> None:
  """NAME in `data_dir`: 40 train / 12 test RGB images of 10-20 px, 4 classes."""
  rng = np.random.default_rng(0)

  def examples(n):
    out = []
    for i in range(n):
      h, w = rng.integers(10, 21, 2)
      out.append((i, {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                      "label": i % NUM_CLASSES}))
    return out

  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": examples(NUM_TRAIN), "test": examples(12)},
      file_format=file_format)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """{'array_record': data dir, 'tfrecord': data dir}, the same examples in each."""
  out = {}
  for fmt in ("array_record", "tfrecord"):
    out[fmt] = str(tmp_path_factory.mktemp(fmt))
    write_dataset(out[fmt], fmt)
  return out


def source(data_dir, augment="inception", process_index=0, process_count=1, seed=0):
  builder = tfds_io.get_builder(NAME, data_dir)
  kwargs = dict(image_size=SIZE, channels=3, augment=augment, prefetch=2,
                process_index=process_index, process_count=process_count)
  if tfds_io.random_access(builder):
    return RandomAccessSource(builder, NAME, data_dir, "train", seed, **kwargs)
  return StreamingSource(builder, NAME, data_dir, "train", seed, shuffle_buffer=16, **kwargs)


def take(it, k):
  return [next(it) for _ in range(k)]


def assert_same(a, b):
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  np.testing.assert_array_equal(a["label"], b["label"])


def test_index_source_resumes_exactly_in_the_uninterrupted_stream(dirs):
  src = source(dirs["array_record"])
  assert isinstance(src, RandomAccessSource) and src.num_examples == NUM_TRAIN
  full = take(src.batches(0, 8), 8)        # 64 examples: crosses into the second epoch
  assert full[0]["inputs"].shape == (8, SIZE, SIZE, 3)
  assert full[0]["inputs"].dtype == np.float32 and full[0]["label"].dtype == np.int32
  for k in (3, 6):                          # in the first epoch / across the epoch boundary
    for a, b in zip(full[k:], take(source(dirs["array_record"]).batches(k, 8), 2)):
      assert_same(a, b)
  # Each epoch is a permutation: every example once, and the augmentation differs between
  # the two visits of the same record (its key is the position in the global stream).
  idx = np.concatenate([src.order.global_indices(s, 8) for s in range(8)])
  np.testing.assert_array_equal(np.sort(idx[:NUM_TRAIN]), np.arange(NUM_TRAIN))
  images = np.concatenate([b["inputs"] for b in full])
  first, again = np.flatnonzero(idx[:NUM_TRAIN] == idx[NUM_TRAIN])[0], NUM_TRAIN
  assert not np.array_equal(images[first], images[again])


def test_index_source_global_order_does_not_depend_on_the_process_count(dirs):
  full = take(source(dirs["array_record"]).batches(4, 8), 2)
  for count in (2, 4):
    shares = [take(source(dirs["array_record"], process_index=p, process_count=count
                          ).batches(4, 8), 2) for p in range(count)]
    for step, whole in enumerate(full):
      joined = {k: np.concatenate([s[step][k] for s in shares]) for k in ("inputs", "label")}
      assert shares[0][step]["inputs"].shape[0] == 8 // count
      assert_same(whole, joined)


def test_index_source_reads_the_epoch_permutation_of_the_records(dirs):
  """Without augmentation, batch s holds the records EpochOrder says, preprocessed exactly as
  the eval path does (the whole split read in record order through `tfds_io.as_dataset`,
  which reads an array_record-only dataset through its data source)."""
  d = dirs["array_record"]
  builder = tfds_io.get_builder(NAME, d)
  assert not tfds_io.tf_data_readable(builder)
  images, labels = tfds_io.load_arrays(
      builder, NAME, d, "train", lambda x: eval_image(x, size=SIZE, channels=3, crop=False))
  order = EpochOrder(7, NUM_TRAIN)
  for step, batch in enumerate(take(source(d, augment="none", seed=7).batches(0, 12), 4)):
    idx = order.global_indices(step, 12)
    np.testing.assert_array_equal(batch["label"], labels[idx])
    np.testing.assert_array_equal(batch["inputs"], images[idx])


def _cfg(data_dir):
  c = base_config().data
  c.data_dir = data_dir
  c.image_size, c.channels = SIZE, 3
  c.num_source_classes = c.num_target_classes = NUM_CLASSES
  c.source.name = c.target.name = NAME
  c.source.in_memory = False
  c.source.augment = "inception"
  c.source.eval_split = "test"
  c.target.num_train, c.target.num_val = 8, 4
  return c


@pytest.mark.parametrize("fmt,cls", [("array_record", RandomAccessSource),
                                     ("tfrecord", StreamingSource)])
def test_pipeline_streams_by_index_when_stored_as_array_record(dirs, fmt, cls):
  d = data.load_transfer_data(_cfg(dirs[fmt]), seed=0)
  assert type(d.source) is cls
  assert d.target_train["inputs"].shape[1:] == (SIZE, SIZE, 3)
  assert next(d.source.batches(2, 8))["inputs"].shape == (8, SIZE, SIZE, 3)
  assert next(d.eval_batches("source_test", 8))["inputs"].shape == (8, SIZE, SIZE, 3)


def test_tfrecord_source_refuses_another_process_count_and_warns_on_resume(dirs, caplog):
  src = source(dirs["tfrecord"], process_count=1)
  src.check_resume(1)
  src.check_resume(None)   # a checkpoint from before the count was recorded: the warning only
  with pytest.raises(DataError) as e:
    src.check_resume(2)
  msg = str(e.value)
  assert "\n" not in msg
  for needle in ("written by 2", "tfrecord", "--file_format=array_record", NAME):
    assert needle in msg, msg
  with caplog.at_level(logging.WARNING):
    next(src.batches(3, 8))
  assert "reads and drops 24 records" in caplog.text and "array_record" in caplog.text
  source(dirs["array_record"]).check_resume(2)   # any count: the order is global


def test_prepare_converts_a_tfrecord_dataset_to_array_record_in_record_order(dirs, tmp_path):
  d = str(tmp_path / "converted")
  shutil.copytree(dirs["tfrecord"], d)
  assert prepare.prepare(NAME, data_dir=d, file_format="array_record").endswith("1.0.0")
  builder = tfds_io.get_builder(NAME, d)
  assert tfds_io.file_formats(builder) == {"tfrecord", "array_record"}
  assert tfds_io.tf_data_readable(builder)   # as_dataset still reads the tfrecord files
  for split in ("train", "test"):
    records = tfds_io.data_source(builder, NAME, d, split)
    by_index = [builder.info.features.deserialize_example_np(r)["label"]
                for r in records.__getitems__(list(range(len(records))))]
    np.testing.assert_array_equal(by_index, tfds_io.load_labels(builder, NAME, d, split))
  prepare.prepare(NAME, data_dir=d, file_format="array_record")   # done: nothing to do
  assert isinstance(source(d), RandomAccessSource)


def test_prepare_builds_an_offline_builder_as_array_record(tmp_path):
  """A builder prepared straight into array_record (no tfrecord files): still read in record
  order (here its labels) by `tfds_io.as_dataset`, through its data source."""
  manual = tmp_path / "fashion"
  write_fashion_idx(manual)
  d = str(tmp_path / "tfds")
  prepare.prepare("fashion_mnist_local", str(manual), d, file_format="array_record")
  builder = tfds_io.get_builder("fashion_mnist_local", d)
  assert tfds_io.file_formats(builder) == {"array_record"}
  assert sorted(tfds_io.load_labels(builder, "fashion_mnist_local", d, "train")) == sorted(
      np.arange(30) % 10)
