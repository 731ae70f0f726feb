"""Image source streams (`interface.SourceStream`): in memory, or streamed with tf.data.

Determinism and resumption. In-memory sources (`data.source.in_memory`, every offline set):
batch s of the global stream is a pure function of (seed, s): the examples at positions
[s * B, (s + 1) * B) of the concatenation of epoch permutations
np.random.default_rng((seed, epoch)).permutation(N); process p takes rows
[p * B / P, (p + 1) * B / P) of it, so the process shares concatenate to the 1-process
batch. Streaming sources (ImageNet-scale, `in_memory=False`): a seeded tf.data pipeline per
process shard (`tfds.split_for_jax_process`), resumed by skipping start_step * B / P encoded
records (cheap: nothing is decoded) and with per-example augmentation seeds derived from the
record's position in the stream, so resuming at step k yields what an uninterrupted stream
yields at k.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from merlin_jax.data import tfds_io
from merlin_jax.data.interface import local_batch_size
from merlin_jax.data.preprocess import (eval_image, inception_image, light_max_shift,
                                        light_shift_image, shift_images)


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
    self._perms = {}                          # epoch -> permutation (the last two)

  def _permutation(self, epoch: int) -> np.ndarray:
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
      parts.append(self._permutation(epoch)[lo:hi])
    return np.concatenate(parts)                                       # [B]

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


class StreamingSource:
  """A tf.data source for datasets too big for memory (module docstring)."""

  def __init__(self, builder, name: str, data_dir: str, split: str, seed: int, *,
               image_size: int, channels: int, augment: str, shuffle_buffer: int,
               prefetch: int, process_index: int = 0, process_count: int = 1):
    self.builder, self.name, self.data_dir, self.split = builder, name, data_dir, split
    self.seed, self.augment = seed, augment
    self.image_size, self.channels = image_size, channels
    self.shuffle_buffer, self.prefetch = shuffle_buffer, prefetch
    self.process_index, self.process_count = process_index, process_count
    self.num_examples = tfds_io.num_examples(builder, split)

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
    image_feature = tfds_io.image_feature(self.builder)
    size, channels, augment = self.image_size, self.channels, self.augment

    def preprocess(i, ex):
      image = image_feature.decode_example(ex["image"])
      key = tf.stack([tf.constant(seed, tf.int64), tf.cast(i, tf.int64)])
      if augment == "inception":
        img = inception_image(image, key, size=size, channels=channels)
      else:
        img = eval_image(image, size=size, channels=channels, crop=False)
        if augment == "light":
          img = light_shift_image(img, key, max_shift=light_max_shift(size))
      return {"inputs": img, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(max(self.prefetch, 1))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """interface.SourceStream.batches."""
    return iter(tfds_io.import_tfds().as_numpy(self.dataset(start_step, global_batch_size)))
