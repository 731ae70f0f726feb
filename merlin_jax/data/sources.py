"""Image source streams (`interface.SourceStream`): in memory, or streamed from TFDS files.

Determinism and resumption. Batch s of the global stream is a pure function of (seed, s):
the examples at positions [s * B, (s + 1) * B) of the concatenation of epoch permutations
np.random.default_rng((seed, epoch)).permutation(N) (`EpochOrder`); process p takes rows
[p * B / P, (p + 1) * B / P) of it, so the process shares concatenate to the 1-process batch,
and a run resumed at step k, on any process count, continues the same global order at once
(O(1): nothing before step k is read). Two sources follow this rule:
  * `InMemorySource` (`data.source.in_memory`, every offline set): arrays in numpy.
  * `RandomAccessSource` (`in_memory=False`, the dataset stored as TFDS array_record): each
    step reads its B / P records by index, then decodes and augments them in tf.data with a
    key derived from each record's position in the global stream (process independent).

`StreamingSource` (`in_memory=False`, the dataset stored as tfrecord only, files TFDS can
only read in sequence) keeps the older scheme: a seeded tf.data pipeline per process shard
(`tfds.split_for_jax_process`) with a shuffle buffer, resumed by skipping start_step * B / P
encoded records (augmentation keyed by the record's position in that process's stream). Its
resume costs O(start_step) reads and its order depends on the process count: a checkpoint
resumes exactly only on the process count that wrote it (`check_resume` refuses another).
`python -m merlin_jax.data.prepare NAME --file_format=array_record` converts such a dataset.
"""

from __future__ import annotations

import threading
from typing import Iterator

import numpy as np
from absl import logging

from merlin_jax.data import tfds_io
from merlin_jax.data.interface import local_batch_size
from merlin_jax.data.preprocess import (eval_image, inception_image, light_max_shift,
                                        light_shift_image, shift_images)
from merlin_jax.errors import DataError

_FOREVER = 2**62   # steps: Dataset.range's end for an infinite stream


class EpochOrder:
  """The global sample order of a source of N examples (module docstring); thread safe."""

  def __init__(self, seed: int, num_examples: int):
    self.seed, self.num_examples = seed, num_examples
    self._perms = {}                          # epoch -> permutation (the last two)
    self._lock = threading.Lock()             # tf.data may call from several threads

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._perms:
        if len(self._perms) >= 2:
          self._perms.pop(min(self._perms))
        self._perms[epoch] = np.random.default_rng((self.seed, epoch)).permutation(
            self.num_examples)
      return self._perms[epoch]

  def global_indices(self, step: int, global_batch_size: int) -> np.ndarray:
    """Indices of the global batch of `step`: positions [s*B, (s+1)*B) of the epoch stream."""
    n = self.num_examples
    start, end = step * global_batch_size, (step + 1) * global_batch_size
    parts = []
    for epoch in range(start // n, (end - 1) // n + 1):
      lo, hi = max(start - epoch * n, 0), min(end - epoch * n, n)
      parts.append(self.permutation(epoch)[lo:hi])
    return np.concatenate(parts)                                       # [B]


def _preprocess_fn(builder, *, size: int, channels: int, augment: str):
  """(key int64 [2], {'image': encoded, 'label'}) -> {'inputs': float32 [S, S, C], 'label'}."""
  tf = tfds_io.import_tf()
  image_feature = tfds_io.image_feature(builder)

  def preprocess(key, ex):
    image = image_feature.decode_example(ex["image"])
    if augment == "inception":
      img = inception_image(image, key, size=size, channels=channels)
    else:
      img = eval_image(image, size=size, channels=channels, crop=False)
      if augment == "light":
        img = light_shift_image(img, key, max_shift=light_max_shift(size))
    return {"inputs": img, "label": tf.cast(ex["label"], tf.int32)}

  return preprocess


def _deterministic(ds):
  tf = tfds_io.import_tf()
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


class InMemorySource:
  """A source held in numpy: batch s is a pure function of (seed, s) (module docstring)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, augment: str = "none",
               process_index: int = 0, process_count: int = 1):
    # float32 [N, H, W, C] in [0, 1], or uint8 (4x less memory; scaled per batch).
    self.images = images
    self.labels = labels.astype(np.int32)     # [N]
    self.seed = seed
    self.augment = augment
    self.process_index = process_index
    self.process_count = process_count
    self.num_examples = len(labels)
    self.order = EpochOrder(seed, self.num_examples)

  def global_indices(self, step: int, global_batch_size: int) -> np.ndarray:
    """Indices of the global batch of `step` (EpochOrder.global_indices)."""
    return self.order.global_indices(step, global_batch_size)           # [B]

  def batch(self, step: int, global_batch_size: int) -> dict:
    """This process's share of the global batch of `step`."""
    local = local_batch_size(global_batch_size, self.process_count, "batch_size")
    rows = slice(self.process_index * local, (self.process_index + 1) * local)
    idx = self.global_indices(step, global_batch_size)[rows]
    images = self.images[idx]                                          # [b, H, W, C]
    if images.dtype == np.uint8:   # same values as tf.image.convert_image_dtype
      images = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if self.augment == "light":
      # Shifts drawn for the whole global batch, then sliced: the process shares
      # concatenate to the 1-process batch.
      m = light_max_shift(images.shape[1])
      shifts = np.random.default_rng((self.seed, 1, step)).integers(
          -m, m + 1, size=(global_batch_size, 2))[rows]               # [b, 2]
      images = shift_images(images, shifts, m)
    return {"inputs": images, "label": self.labels[idx]}

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """interface.SourceStream.batches (checks the batch size before the first batch)."""
    local_batch_size(global_batch_size, self.process_count, "batch_size")
    return self._batches(start_step, global_batch_size)

  def _batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    step = start_step
    while True:
      yield self.batch(step, global_batch_size)
      step += 1


class RandomAccessSource:
  """A streamed source stored as TFDS array_record, read by index (module docstring)."""

  def __init__(self, builder, name: str, data_dir: str, split: str, seed: int, *,
               image_size: int, channels: int, augment: str, prefetch: int,
               process_index: int = 0, process_count: int = 1):
    self.builder, self.name, self.split = builder, name, split
    self.seed, self.augment = seed, augment
    self.image_size, self.channels, self.prefetch = image_size, channels, prefetch
    self.process_index, self.process_count = process_index, process_count
    self.records = tfds_io.data_source(builder, name, data_dir, split)   # serialized, by index
    self.num_examples = len(self.records)
    if not self.num_examples:
      raise DataError(f"dataset {name!r} split {split!r} is empty")
    self.order = EpochOrder(seed, self.num_examples)

  def check_resume(self, saved_process_count: int | None) -> None:
    """Any process count resumes exactly (the order is global): nothing to check."""

  def read(self, step: int, global_batch_size: int):
    """This process's records of global batch `step` and their positions in the global stream.

    -> (serialized tf.Examples object [b], positions int64 [b]), b = B / P.
    """
    local = global_batch_size // self.process_count
    lo = self.process_index * local
    idx = self.order.global_indices(step, global_batch_size)[lo:lo + local]
    records = self.records.__getitems__(idx.tolist())
    positions = step * global_batch_size + lo + np.arange(local, dtype=np.int64)
    return np.array(records, dtype=object), positions

  def dataset(self, start_step: int, global_batch_size: int):
    """The tf.data pipeline of this process's batches from step start_step on."""
    tf = tfds_io.import_tf()
    local = local_batch_size(global_batch_size, self.process_count, "batch_size")
    parse = tfds_io.example_parser(self.builder, tfds_io.skip_decoding(self.builder))
    preprocess = _preprocess_fn(self.builder, size=self.image_size, channels=self.channels,
                                augment=self.augment)
    seed = tf.constant(self.seed, tf.int64)

    def read_step(step):   # the records of one step, read while earlier steps decode
      records, positions = tf.numpy_function(
          lambda s: self.read(int(s), global_batch_size), [step], (tf.string, tf.int64),
          stateful=False)
      records.set_shape([local])
      positions.set_shape([local])
      return records, positions

    def decode(record, position):   # the augmentation key: the position in the global stream
      return preprocess(tf.stack([seed, position]), parse(record))

    ds = tf.data.Dataset.range(start_step, _FOREVER)
    ds = ds.map(read_step, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(max(self.prefetch, 1))
    return _deterministic(ds)

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """interface.SourceStream.batches (checks the batch size before the first batch)."""
    return iter(tfds_io.import_tfds().as_numpy(self.dataset(start_step, global_batch_size)))


class StreamingSource:
  """A tf.data source over tfrecord files, shuffled per process (module docstring)."""

  def __init__(self, builder, name: str, data_dir: str, split: str, seed: int, *,
               image_size: int, channels: int, augment: str, shuffle_buffer: int,
               prefetch: int, process_index: int = 0, process_count: int = 1):
    self.builder, self.name, self.data_dir, self.split = builder, name, data_dir, split
    self.seed, self.augment = seed, augment
    self.image_size, self.channels = image_size, channels
    self.shuffle_buffer, self.prefetch = shuffle_buffer, prefetch
    self.process_index, self.process_count = process_index, process_count
    self.num_examples = tfds_io.num_examples(builder, split)

  def _array_record_hint(self) -> str:
    dd = self.data_dir or "~/tensorflow_datasets"
    return (f"prepare it as array_record once (`python -m merlin_jax.data.prepare {self.name} "
            f"--file_format=array_record --data_dir={dd}`) to resume in O(1) on any process "
            "count")

  def check_resume(self, saved_process_count: int | None) -> None:
    """Before resuming a checkpoint written by `saved_process_count` processes (None: not
    recorded): DataError if that differs from this run's, as this stream's order depends on
    the process count."""
    if saved_process_count is not None and saved_process_count != self.process_count:
      raise DataError(
          f"cannot resume the source {self.name!r} exactly on {self.process_count} "
          f"process(es): it is stored as tfrecord, whose streamed order depends on the process "
          f"count, and the checkpoint was written by {saved_process_count}; resume on "
          f"{saved_process_count}, or {self._array_record_hint()}")

  def dataset(self, start_step: int, global_batch_size: int):
    """The tf.data pipeline of this process's batches from step start_step on."""
    tf, tfds = tfds_io.import_tf(), tfds_io.import_tfds()
    local = local_batch_size(global_batch_size, self.process_count, "batch_size")
    split = self.split
    if self.process_count > 1:
      split = tfds.split_for_jax_process(split, process_index=self.process_index,
                                         process_count=self.process_count)
    seed = self.seed * 1_000_003 + self.process_index   # per-process shard, own order
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    ds = tfds_io.as_dataset(self.builder, self.name, self.data_dir, split, shuffle_files=True,
                            read_config=read_config,
                            decoders=tfds_io.skip_decoding(self.builder))
    ds = ds.repeat().shuffle(max(self.shuffle_buffer, 1), seed=seed,
                             reshuffle_each_iteration=True)
    # Resume: skip encoded records; the index keys each example's augmentation.
    ds = ds.enumerate().skip(start_step * local)
    preprocess = _preprocess_fn(self.builder, size=self.image_size, channels=self.channels,
                                augment=self.augment)
    ds = ds.map(lambda i, ex: preprocess(
        tf.stack([tf.constant(seed, tf.int64), tf.cast(i, tf.int64)]), ex),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(max(self.prefetch, 1))
    return _deterministic(ds)

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """interface.SourceStream.batches."""
    if start_step > 0:
      logging.warning(
          "resuming the tfrecord source %r at step %d: reads and drops %d records first, and "
          "its order is exact only on the process count that wrote the checkpoint (%d now); "
          "%s", self.name, start_step,
          start_step * global_batch_size // self.process_count, self.process_count,
          self._array_record_hint())
    return iter(tfds_io.import_tfds().as_numpy(self.dataset(start_step, global_batch_size)))
