"""Input pipeline: the source stream, the labelled target set D_t and the eval sets.

The training program calls exactly

    data = load_transfer_data(config.data, seed, need_source=..., process_index=...,
                              process_count=...)
    for batch in data.source.batches(start_step, global_batch_size): ...   # infinite
    data.target_train / data.target_val                                    # numpy dicts
    for batch in data.eval_batches('target_test', batch_size): ...         # padded + mask

Every dataset is read through TFDS (`tfds.builder(name, data_dir)`): our offline builders
(`merlin_jax.data.builders`) and the catalog sets of the paper's experiments alike.

Images are float32 in [0, 1], [H, W, C] = (image_size, image_size, channels): resized when
the stored size differs (always for datasets of variable size), gray -> RGB by repeating the
channel, RGB -> gray by the channel mean. No mean/std normalisation here: a model that wants
it does it itself, so every pipeline and every test sees the same [0, 1] range.

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

import dataclasses
import functools
import logging
from typing import Callable, Iterator

import numpy as np

from merlin_jax.data import synthetic
from merlin_jax.data.signature import add_signature
from merlin_jax.data.splits import class_balanced_split
from merlin_jax.errors import ConfigError, DataError

AUGMENTS = ("none", "light", "inception")
# Eval sets up to this size (float32 bytes) are cached in memory; bigger ones are streamed.
_CACHE_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------------------
# TF / TFDS access (imported lazily: importing TensorFlow takes seconds).


@functools.lru_cache(maxsize=None)
def _tf():
  import tensorflow as tf
  try:  # the accelerator belongs to JAX: TF only reads files and decodes images on CPU
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised by someone else
    pass
  return tf


def _tfds():
  _tf()
  import tensorflow_datasets as tfds
  from merlin_jax.data import builders  # noqa: F401  registers our builders
  return tfds


def _base_name(name: str) -> str:
  return name.split("/")[0].split(":")[0]


def prepare_hint(name: str, data_dir: str) -> str:
  """The command that prepares dataset `name` (for DataError messages)."""
  from merlin_jax.data import builders
  dd = data_dir or "~/tensorflow_datasets"
  base = _base_name(name)
  if base in builders.MANUAL:
    return (f"run `python -m merlin_jax.data.prepare {name} --manual_dir=DIR "
            f"--data_dir={dd}` once")
  return (f"run `tfds build {name} --data_dir={dd}` once (datasets with manual downloads, "
          f"e.g. imagenet2012, also need --manual_dir; see the config's docstring)")


def get_builder(name: str, data_dir: str = ""):
  """tfds.builder(name) and, for our pip-only builders, build on first use.

  Never downloads: catalog and manual-dir datasets must have been prepared beforehand
  (reading them raises DataError naming the command).
  """
  tfds = _tfds()
  from merlin_jax.data import builders
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError, unknown builder config, ...
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"dataset {name!r}: not a TFDS catalog name nor a merlin_jax builder "
                    f"({first})") from None
  if _base_name(name) in builders.PIP_ONLY:
    if not builder.is_prepared():
      logging.info("Building %s in %s (first use; nothing is downloaded).", name,
                   builder.data_dir)
    try:
      builder.download_and_prepare()
    except Exception:  # pylint: disable=broad-except
      # Several processes building into one shared data dir: TFDS writes to a temporary
      # folder and renames it, so the loser of the race finds the dataset prepared.
      builder = tfds.builder(name, data_dir=data_dir or None)
      if not builder.is_prepared():
        raise
  return builder


def _as_dataset(builder, name: str, data_dir: str, split: str, **kwargs):
  """builder.as_dataset with one-line DataErrors for unprepared data / unknown splits."""
  try:
    return builder.as_dataset(split=split, **kwargs)
  except AssertionError:  # TFDS: "could not find data in DIR"
    raise DataError(f"dataset {name!r} is not prepared in "
                    f"{data_dir or '~/tensorflow_datasets'}: {prepare_hint(name, data_dir)}"
                    ) from None
  except (KeyError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"dataset {name!r}: cannot read split {split!r} ({first})") from None


def _num_examples(builder, split: str) -> int | None:
  try:
    return int(builder.info.splits[split].num_examples) or None
  except Exception:  # pylint: disable=broad-except  (unknown split info, e.g. mock data)
    return None


def _check_num_classes(builder, name: str, expected: int, key: str):
  try:
    actual = builder.info.features["label"].num_classes
  except Exception:  # pylint: disable=broad-except
    raise DataError(f"dataset {name!r} has no 'label' ClassLabel feature") from None
  if actual != expected:
    raise ConfigError(key, f"{expected}, but dataset {name!r} has {actual} classes")


# ---------------------------------------------------------------------------------------
# Image preprocessing (TF ops, run inside tf.data).


def _convert_channels(img, channels: int):
  tf = _tf()
  c = img.shape[-1]
  if c == channels:
    return img
  if c == 1 and channels == 3:
    return tf.tile(img, [1, 1, 3])
  if channels == 1:
    return tf.reduce_mean(img, axis=-1, keepdims=True)
  raise ConfigError("data.channels", f"cannot convert {c} channels to {channels}")


def _resize(img, size: int):
  tf = _tf()
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return tf.image.resize(img, (size, size), method="bilinear", antialias=True)


def eval_image(image, *, size: int, channels: int, crop: bool):
  """uint8 [h, w, c] -> float32 [size, size, channels] in [0, 1].

  crop=False: resize to size x size (small datasets). crop=True (ImageNet-style configs):
  resize the shorter side to size * 256/224, then take the central size x size crop.
  """
  tf = _tf()
  img = tf.image.convert_image_dtype(image, tf.float32)
  if crop:
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    scale = (size * 256.0 / 224.0) / tf.reduce_min(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
    img = tf.image.resize(img, new_hw, method="bilinear", antialias=True)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    img = img[top:top + size, left:left + size]
    img.set_shape([size, size, image.shape[-1]])
  else:
    img = _resize(img, size)
  img = tf.clip_by_value(_convert_channels(img, channels), 0.0, 1.0)
  img.set_shape([size, size, channels])
  return img


def inception_image(image, seed, *, size: int, channels: int):
  """Random-resized crop (area 8-100%, aspect 3/4-4/3) + horizontal flip; stateless in seed."""
  tf = _tf()
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=bbox, seed=seed, min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  img = tf.slice(image, begin, crop_size)
  img.set_shape([None, None, image.shape[-1]])
  img = tf.image.convert_image_dtype(img, tf.float32)
  img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
  img = tf.image.stateless_random_flip_left_right(img, seed=seed + 1)
  img = tf.clip_by_value(_convert_channels(img, channels), 0.0, 1.0)
  img.set_shape([size, size, channels])
  return img


def light_shift_image(img, seed, *, max_shift: int):
  """A random integer shift of up to max_shift pixels (zero fill); img float [S, S, C]."""
  tf = _tf()
  s, c = img.shape[0], img.shape[-1]
  padded = tf.pad(img, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
  return tf.image.stateless_random_crop(padded, [s, s, c], seed=seed)


def _max_shift(size: int) -> int:
  return max(1, round(size / 14))   # 2 px at 28 / 32 px


# ---------------------------------------------------------------------------------------
# Reading whole splits into numpy.


def _skip_decoding():
  """Read only 'image' (still encoded) and 'label': other features (bboxes, captions) are
  never parsed, and images are decoded after filtering / skipping."""
  tfds = _tfds()
  return tfds.decode.PartialDecoding({"image": True, "label": True},
                                     decoders={"image": tfds.decode.SkipDecoding()})


def load_labels(builder, name: str, data_dir: str, split: str) -> np.ndarray:
  """All labels of `split` in record order (images are not decoded). -> int64 [N]."""
  tfds = _tfds()
  ds = _as_dataset(builder, name, data_dir, split, shuffle_files=False,
                   decoders=_skip_decoding())
  ds = ds.map(lambda ex: ex["label"]).batch(65536)
  parts = [np.asarray(x) for x in tfds.as_numpy(ds)]
  return np.concatenate(parts).astype(np.int64) if parts else np.zeros([0], np.int64)


def load_arrays(builder, name: str, data_dir: str, split: str, image_fn: Callable,
                indices: np.ndarray | None = None):
  """Decode + preprocess `split` (or only the records at sorted `indices`) into numpy.

  -> (images float32 [N, S, S, C], labels int32 [N]) in record order.
  """
  tf, tfds = _tf(), _tfds()
  ds = _as_dataset(builder, name, data_dir, split, shuffle_files=False,
                   decoders=_skip_decoding())
  image_feature = builder.info.features["image"]
  if indices is not None:
    total = int(indices.max()) + 1 if len(indices) else 0
    keep = np.zeros([total], bool)
    keep[indices] = True
    keep = tf.constant(keep)
    keep_fn = lambda i, ex: tf.logical_and(i < total, tf.gather(keep, tf.minimum(i, total - 1)))
    ds = ds.enumerate().filter(keep_fn)
    ds = ds.map(lambda i, ex: ex)
  ds = ds.map(lambda ex: (image_fn(image_feature.decode_example(ex["image"])),
                          tf.cast(ex["label"], tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(1024).prefetch(2)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):
    images.append(x)
    labels.append(y)
  if not images:
    raise DataError(f"dataset {name!r} split {split!r} is empty")
  return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------------------------------
# The source stream.


class SourceStream:
  """An infinite, seeded stream of source batches (this process's share of each)."""

  num_examples: int | None = None

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """Batch k is the batch of global step start_step + k:
    {'image': float32 [global_batch_size // process_count, H, W, C], 'label': int32 [...]}.
    """
    raise NotImplementedError

  def _local_batch_size(self, global_batch_size: int) -> int:
    if global_batch_size % self.process_count:
      raise ConfigError("batch_size", f"{global_batch_size} is not divisible by the "
                        f"{self.process_count} processes")
    return global_batch_size // self.process_count


class InMemorySource(SourceStream):
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
    local = self._local_batch_size(global_batch_size)
    rows = slice(self.process_index * local, (self.process_index + 1) * local)
    idx = self.global_indices(step, global_batch_size)[rows]
    images = self.images[idx]                                          # [b, H, W, C]
    if images.dtype == np.uint8:   # same values as tf.image.convert_image_dtype
      images = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if self.augment == "light":
      # Shifts drawn for the whole global batch, then sliced: the process shares
      # concatenate to the 1-process batch.
      m = _max_shift(images.shape[1])
      shifts = np.random.default_rng((self.seed, 1, step)).integers(
          -m, m + 1, size=(global_batch_size, 2))[rows]               # [b, 2]
      images = shift_images(images, shifts, m)
    return {"image": images, "label": self.labels[idx]}

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    self._local_batch_size(global_batch_size)
    step = start_step
    while True:
      yield self.batch(step, global_batch_size)
      step += 1


def shift_images(images: np.ndarray, shifts: np.ndarray, max_shift: int) -> np.ndarray:
  """Shift image i by shifts[i] = (dy, dx) pixels with zero fill. images [b, H, W, C]."""
  b, h, w, _ = images.shape
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
  rows = np.arange(h)[None, :] + m - shifts[:, :1]                     # [b, H]
  cols = np.arange(w)[None, :] + m - shifts[:, 1:]                     # [b, W]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class StreamingSource(SourceStream):
  """A tf.data source for datasets too big for memory (module docstring)."""

  def __init__(self, builder, name: str, data_dir: str, split: str, seed: int, *,
               image_size: int, channels: int, augment: str, shuffle_buffer: int,
               prefetch: int, process_index: int = 0, process_count: int = 1):
    self.builder, self.name, self.data_dir, self.split = builder, name, data_dir, split
    self.seed, self.augment = seed, augment
    self.image_size, self.channels = image_size, channels
    self.shuffle_buffer, self.prefetch = shuffle_buffer, prefetch
    self.process_index, self.process_count = process_index, process_count
    self.num_examples = _num_examples(builder, split)

  def dataset(self, start_step: int, global_batch_size: int):
    tf, tfds = _tf(), _tfds()
    local = self._local_batch_size(global_batch_size)
    split = self.split
    if self.process_count > 1:
      split = tfds.split_for_jax_process(split, process_index=self.process_index,
                                         process_count=self.process_count)
    seed = self.seed * 1_000_003 + self.process_index   # per-process shard, own order
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    ds = _as_dataset(self.builder, self.name, self.data_dir, split, shuffle_files=True,
                     read_config=read_config, decoders=_skip_decoding())
    ds = ds.repeat().shuffle(max(self.shuffle_buffer, 1), seed=seed,
                             reshuffle_each_iteration=True)
    # Resume: skip encoded records; the index keys each example's augmentation.
    ds = ds.enumerate().skip(start_step * local)
    image_feature = self.builder.info.features["image"]
    size, channels, augment = self.image_size, self.channels, self.augment

    def preprocess(i, ex):
      image = image_feature.decode_example(ex["image"])
      key = tf.stack([tf.constant(seed, tf.int64), tf.cast(i, tf.int64)])
      if augment == "inception":
        img = inception_image(image, key, size=size, channels=channels)
      else:
        img = eval_image(image, size=size, channels=channels, crop=False)
        if augment == "light":
          img = light_shift_image(img, key, max_shift=_max_shift(size))
      return {"image": img, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local, drop_remainder=True).prefetch(max(self.prefetch, 1))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    return iter(_tfds().as_numpy(self.dataset(start_step, global_batch_size)))


# ---------------------------------------------------------------------------------------
# Eval sets and the TransferData bundle.


@dataclasses.dataclass
class _EvalSet:
  arrays: tuple | None = None                 # (images float32 [N,H,W,C], labels int32 [N])
  dataset_fn: Callable | None = None          # () -> unbatched tf.data of (image, label)


@dataclasses.dataclass
class TransferData:
  """Everything a run reads: the source stream, D_t, its validation split, the eval sets."""

  source: SourceStream | None                 # None when need_source is False
  target_train: dict                          # {'image': f32 [N_tr,H,W,C], 'label': i32 [N_tr]}
  target_val: dict                            # same layout, disjoint from target_train
  num_source_classes: int
  num_target_classes: int
  image_shape: tuple                          # (H, W, C)
  target_train_indices: np.ndarray | None = None   # record indices in target.train_split
  target_val_indices: np.ndarray | None = None
  process_index: int = 0
  process_count: int = 1
  _eval: dict = dataclasses.field(default_factory=dict, repr=False)

  def eval_sets(self) -> list[str]:
    """Names accepted by eval_batches: 'target_test', ['source_test'], ['source_test_clean']."""
    return list(self._eval)

  def eval_batches(self, name: str, batch_size: int) -> Iterator[dict]:
    """The whole set `name` in order, in global batches of `batch_size` padded at the end.

    Yields this process's rows of every global batch: {'image': f32 [b, H, W, C],
    'label': i32 [b], 'mask': f32 [b]} with b = batch_size // process_count; mask is 0 on
    padding. Every process yields the same number of batches (needed for multi-host jit).
    """
    if name not in self._eval:
      raise KeyError(f"unknown eval set {name!r}; have {self.eval_sets()}")
    if batch_size % self.process_count:
      raise ConfigError("eval.batch_size", f"{batch_size} is not divisible by the "
                        f"{self.process_count} processes")
    local = batch_size // self.process_count
    rows = slice(self.process_index * local, (self.process_index + 1) * local)
    for images, labels in self._global_eval_batches(self._eval[name], batch_size):
      n = len(labels)
      mask = np.zeros([batch_size], np.float32)
      mask[:n] = 1.0
      if n < batch_size:
        images = np.concatenate(
            [images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros([batch_size - n], labels.dtype)])
      yield {"image": images[rows], "label": labels[rows].astype(np.int32),
             "mask": mask[rows]}

  @staticmethod
  def _global_eval_batches(ev: _EvalSet, batch_size: int):
    if ev.arrays is not None:
      images, labels = ev.arrays
      for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]
    else:
      ds = ev.dataset_fn().batch(batch_size).prefetch(2)
      yield from _tfds().as_numpy(ds)


def _eval_set(builder, name: str, data_dir: str, split: str, image_fn, image_shape) -> _EvalSet:
  """Small eval splits are decoded once and cached; big (or unknown-size) ones streamed."""
  n = _num_examples(builder, split)
  if n is not None and n * int(np.prod(image_shape)) * 4 <= _CACHE_BYTES:
    return _EvalSet(arrays=load_arrays(builder, name, data_dir, split, image_fn))
  tf = _tf()
  # Check now (one line DataError at load time rather than mid-training).
  _as_dataset(builder, name, data_dir, split, decoders=_skip_decoding())
  image_feature = builder.info.features["image"]

  def dataset_fn():
    ds = _as_dataset(builder, name, data_dir, split, shuffle_files=False,
                     decoders=_skip_decoding())
    return ds.map(lambda ex: (image_fn(image_feature.decode_example(ex["image"])),
                              tf.cast(ex["label"], tf.int32)),
                  num_parallel_calls=tf.data.AUTOTUNE)

  return _EvalSet(dataset_fn=dataset_fn)


def _validate(cfg, process_index: int, process_count: int):
  if cfg.channels not in (1, 3):
    raise ConfigError("data.channels", f"must be 1 or 3, got {cfg.channels}")
  if cfg.image_size <= 0:
    raise ConfigError("data.image_size", f"must be positive, got {cfg.image_size}")
  if cfg.source.augment not in AUGMENTS:
    raise ConfigError("data.source.augment", f"must be one of {AUGMENTS}, got "
                      f"{cfg.source.augment!r}")
  if cfg.source.augment == "inception" and cfg.source.in_memory:
    raise ConfigError("data.source.augment", "'inception' needs data.source.in_memory=False "
                      "(use 'light' for in-memory sources)")
  if cfg.source.signature.enabled and not cfg.source.in_memory:
    raise ConfigError("data.source.signature.enabled",
                      "the signature source needs data.source.in_memory=True")
  if cfg.target.num_train <= 0 or cfg.target.num_val < 0:
    raise ConfigError("data.target.num_train", "num_train must be > 0 and num_val >= 0")
  if not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")


def load_transfer_data(data_cfg, seed: int, *, need_source: bool = True,
                       process_index: int = 0, process_count: int = 1) -> TransferData:
  """Reads config.data's source and target (see the module docstring).

  D_t (target_train, data_cfg.target.num_train examples) and target_val (num_val) are
  drawn class-balanced and disjoint from target.train_split by `class_balanced_split`
  with `seed`; target_test is the whole target.test_split. With
  data_cfg.source.exclude_target, the source (the same dataset and split as the target
  pool) leaves out the examples chosen for D_t and target_val.
  """
  if synthetic.is_synthetic(data_cfg):   # the tiny test pair: data/synthetic.py
    return synthetic.load_synthetic(data_cfg, seed, need_source=need_source,
                                    process_index=process_index, process_count=process_count)
  if data_cfg.get("kind", "image") == "text":   # sentence(-pair) targets: data/text.py
    from merlin_jax.data import text
    return text.load_text_transfer_data(data_cfg, seed, need_source=need_source,
                                        process_index=process_index, process_count=process_count)
  cfg = data_cfg
  _validate(cfg, process_index, process_count)
  size, channels, data_dir = cfg.image_size, cfg.channels, cfg.data_dir
  image_shape = (size, size, channels)
  crop = cfg.source.augment == "inception"   # ImageNet-style: eval = resize + center crop
  image_fn = functools.partial(eval_image, size=size, channels=channels, crop=crop)
  exclude_target = bool(cfg.source.get("exclude_target", False))

  # --- Target: D_t and its validation split, class-balanced from target.train_split -----
  tgt = cfg.target
  tb = get_builder(tgt.name, data_dir)
  _check_num_classes(tb, tgt.name, cfg.num_target_classes, "data.num_target_classes")
  labels = load_labels(tb, tgt.name, data_dir, tgt.train_split)
  try:
    train_idx, val_idx = class_balanced_split(labels, tgt.num_train, tgt.num_val, seed,
                                              cfg.num_target_classes)
  except ValueError as e:
    raise ConfigError("data.target.num_train", f"{e} ({tgt.name}:{tgt.train_split})") from None
  chosen = np.union1d(train_idx, val_idx)                               # sorted
  images, labs = load_arrays(tb, tgt.name, data_dir, tgt.train_split, image_fn, chosen)
  pos_train, pos_val = np.searchsorted(chosen, train_idx), np.searchsorted(chosen, val_idx)
  target_train = {"image": images[pos_train], "label": labs[pos_train]}
  target_val = {"image": images[pos_val], "label": labs[pos_val]}
  evals = {"target_test": _eval_set(tb, tgt.name, data_dir, tgt.test_split, image_fn,
                                    image_shape)}

  # --- Source ---------------------------------------------------------------------------
  source = None
  if need_source:
    src = cfg.source
    sb = get_builder(src.name, data_dir)
    _check_num_classes(sb, src.name, cfg.num_source_classes, "data.num_source_classes")
    if exclude_target and (src.name != tgt.name or src.split != tgt.train_split):
      raise ConfigError("data.source.exclude_target",
                        "needs data.source.name == data.target.name and data.source.split "
                        "== data.target.train_split")
    if src.in_memory:
      stored = tuple(sb.info.features["image"].shape)
      if (stored == image_shape and not src.signature.enabled
          and sb.info.features["image"].np_dtype == np.uint8):
        # Already the right size and channels: keep uint8 (a quarter of the memory).
        images, labels = load_arrays(sb, src.name, data_dir, src.split, lambda x: x)
      else:
        images, labels = load_arrays(sb, src.name, data_dir, src.split, image_fn)
      if exclude_target:
        keep = np.ones(len(labels), bool)
        keep[chosen[chosen < len(labels)]] = False
        images, labels = images[keep], labels[keep]
      sig = src.signature
      if sig.enabled:
        images = add_signature(images, labels, np.random.default_rng((seed, 3)),
                               sig.strength, sig.std, cfg.num_source_classes)
      source = InMemorySource(images, labels, seed, src.augment, process_index,
                              process_count)
      if src.eval_split:
        test_images, test_labels = load_arrays(sb, src.name, data_dir, src.eval_split,
                                               image_fn)
        if sig.enabled:
          signed = add_signature(test_images, test_labels, np.random.default_rng((seed, 4)),
                                 sig.strength, sig.std, cfg.num_source_classes)
          evals["source_test"] = _EvalSet(arrays=(signed, test_labels))
          evals["source_test_clean"] = _EvalSet(arrays=(test_images, test_labels))
        else:
          evals["source_test"] = _EvalSet(arrays=(test_images, test_labels))
    else:
      if exclude_target:
        raise ConfigError("data.source.exclude_target", "needs data.source.in_memory=True")
      source = StreamingSource(sb, src.name, data_dir, src.split, seed, image_size=size,
                               channels=channels, augment=src.augment,
                               shuffle_buffer=cfg.shuffle_buffer, prefetch=cfg.prefetch,
                               process_index=process_index, process_count=process_count)
      _as_dataset(sb, src.name, data_dir, src.split, decoders=_skip_decoding())  # check now
      if src.eval_split:
        evals["source_test"] = _eval_set(sb, src.name, data_dir, src.eval_split, image_fn,
                                         image_shape)

  return TransferData(
      source=source, target_train=target_train, target_val=target_val,
      num_source_classes=cfg.num_source_classes, num_target_classes=cfg.num_target_classes,
      image_shape=image_shape, target_train_indices=train_idx, target_val_indices=val_idx,
      process_index=process_index, process_count=process_count, _eval=evals)
