"""Image transfer data: the source stream, D_t, target_val and the eval sets, through TFDS.

Images are float32 in [0, 1], [image_size, image_size, channels] (`preprocess`); the source
is a `sources.InMemorySource`, or streamed (`in_memory=False`): a `sources.RandomAccessSource`
when the dataset is stored as array_record, else a `sources.StreamingSource`. Small eval
splits are decoded once and held in memory, big ones streamed.
"""

from __future__ import annotations

import functools

import numpy as np

from merlin_jax.data import tfds_io
from merlin_jax.data.interface import EvalSet, TransferData, take_rows
from merlin_jax.data.preprocess import eval_image
from merlin_jax.data.signature import add_signature
from merlin_jax.data.sources import InMemorySource, RandomAccessSource, StreamingSource
from merlin_jax.data.splits import class_balanced_split
from merlin_jax.errors import ConfigError

# Eval sets up to this size (float32 bytes) are cached in memory; bigger ones are streamed.
CACHE_BYTES = 512 * 2**20


def arrays_eval_set(images: np.ndarray, labels: np.ndarray) -> EvalSet:
  """An in-memory EvalSet of images float32 [N, H, W, C] and labels int32 [N]."""
  return EvalSet(arrays={"inputs": images, "label": labels})


def eval_set(builder, name: str, data_dir: str, split: str, image_fn, image_shape) -> EvalSet:
  """Small eval splits are decoded once and cached; big (or unknown-size) ones streamed."""
  n = tfds_io.num_examples(builder, split)
  if n is not None and n * int(np.prod(image_shape)) * 4 <= CACHE_BYTES:
    return arrays_eval_set(*tfds_io.load_arrays(builder, name, data_dir, split, image_fn))
  # Check now (one line DataError at load time rather than mid-training).
  tfds_io.as_dataset(builder, name, data_dir, split, decoders=tfds_io.skip_decoding(builder))

  def batches_fn(batch_size: int):
    ds = tfds_io.as_dataset(builder, name, data_dir, split, shuffle_files=False,
                            decoders=tfds_io.skip_decoding(builder))
    ds = tfds_io.decode_examples(ds, builder, image_fn).batch(batch_size).prefetch(2)
    return ({"inputs": x, "label": y} for x, y in tfds_io.import_tfds().as_numpy(ds))

  return EvalSet(batches_fn=batches_fn)


def stores_model_pixels(builder, image_shape) -> bool:
  """The dataset's images are uint8 of exactly `image_shape`: eval_image would only scale
  them by 1/255 (no resize, no channel change)."""
  feature = tfds_io.image_feature(builder)
  return tuple(feature.shape) == tuple(image_shape) and feature.np_dtype == np.uint8


def to_uint8(img):
  """float32 pixels in [0, 1] -> uint8, rounded to the nearest k/255 (exact for k/255)."""
  tf = tfds_io.import_tf()
  return tf.cast(tf.round(tf.clip_by_value(img, 0.0, 1.0) * 255.0), tf.uint8)


def validate(cfg, process_index: int, process_count: int):
  """ConfigErrors for image data settings that cannot work together (each key's own range
  and choices: merlin_jax/keys.py)."""
  if cfg.source.augment == "inception" and cfg.source.in_memory:
    raise ConfigError("data.source.augment", "'inception' needs data.source.in_memory=False "
                      "(use 'light' for in-memory sources)")
  if cfg.source.signature.enabled and not cfg.source.in_memory:
    raise ConfigError("data.source.signature.enabled",
                      "the signature source needs data.source.in_memory=True")
  if cfg.target.num_train <= 0:
    raise ConfigError("data.target.num_train", f"image data needs num_train > 0 (-1, all, is "
                      f"for text targets), got {cfg.target.num_train}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")


def load_image_transfer_data(data_cfg, seed: int, *, need_source: bool = True,
                             process_index: int = 0, process_count: int = 1) -> TransferData:
  """Reads config.data's source and target.

  D_t (target_train, data_cfg.target.num_train examples) and target_val (num_val) are
  drawn class-balanced and disjoint from target.train_split by `class_balanced_split`
  with `seed`; target_test is the whole target.test_split. With
  data_cfg.source.exclude_target, the source (the same dataset and split as the target
  pool) leaves out the examples chosen for D_t and target_val.
  """
  cfg = data_cfg
  validate(cfg, process_index, process_count)
  size, channels, data_dir = cfg.image_size, cfg.channels, cfg.data_dir
  image_shape = (size, size, channels)
  crop = cfg.source.augment == "inception"   # ImageNet-style: eval = resize + center crop
  image_fn = functools.partial(eval_image, size=size, channels=channels, crop=crop)
  exclude_target = bool(cfg.source.get("exclude_target", False))

  # --- Target: D_t and its validation split, class-balanced from target.train_split -----
  tgt = cfg.target
  tfds_io.use_feature_keys(tgt.name, tgt.get("image_key", "image"), tgt.get("label_key", "label"))
  tb = tfds_io.get_builder(tgt.name, data_dir)
  tfds_io.check_num_classes(tb, tgt.name, cfg.num_target_classes, "data.num_target_classes")
  labels = tfds_io.load_labels(tb, tgt.name, data_dir, tgt.train_split)
  try:
    train_idx, val_idx = class_balanced_split(labels, tgt.num_train, tgt.num_val, seed,
                                              cfg.num_target_classes)
  except ValueError as e:
    raise ConfigError("data.target.num_train", f"{e} ({tgt.name}:{tgt.train_split})") from None
  chosen = np.union1d(train_idx, val_idx)                               # sorted
  # Target images are held as uint8 where that is free: a quarter of the memory, on the
  # host and on device (the backbone scales the rows it reads: models.pixels_to_float).
  # Stored at the model's size: kept as is (bitwise the pipeline's floats). ImageNet-style
  # pairs (crop): the resized crop rounded to uint8 (ours: <= 1/510 from the float crop).
  # Other resized images (the small offline pairs) stay float32.
  tgt_fn = image_fn
  if not crop and stores_model_pixels(tb, image_shape):
    tgt_fn = lambda x: x
  elif crop:
    tgt_fn = lambda x: to_uint8(image_fn(x))
  images, labs = tfds_io.load_arrays(tb, tgt.name, data_dir, tgt.train_split, tgt_fn,
                                     chosen)
  pool = {"inputs": images, "label": labs}
  target_train = take_rows(pool, np.searchsorted(chosen, train_idx))
  target_val = take_rows(pool, np.searchsorted(chosen, val_idx))
  evals = {"target_test": eval_set(tb, tgt.name, data_dir, tgt.test_split, tgt_fn,
                                   image_shape)}

  # --- Source ---------------------------------------------------------------------------
  source = None
  if need_source:
    src = cfg.source
    tfds_io.use_feature_keys(src.name, src.get("image_key", "image"),
                             src.get("label_key", "label"))
    sb = tfds_io.get_builder(src.name, data_dir)
    tfds_io.check_num_classes(sb, src.name, cfg.num_source_classes, "data.num_source_classes")
    if exclude_target and (src.name != tgt.name or src.split != tgt.train_split):
      raise ConfigError("data.source.exclude_target",
                        "needs data.source.name == data.target.name and data.source.split "
                        "== data.target.train_split")
    if src.in_memory:
      stored = tuple(tfds_io.image_feature(sb).shape)
      if (stored == image_shape and not src.signature.enabled
          and tfds_io.image_feature(sb).np_dtype == np.uint8):
        # Already the right size and channels: keep uint8 (a quarter of the memory).
        images, labels = tfds_io.load_arrays(sb, src.name, data_dir, src.split, lambda x: x)
      else:
        images, labels = tfds_io.load_arrays(sb, src.name, data_dir, src.split, image_fn)
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
        test_images, test_labels = tfds_io.load_arrays(sb, src.name, data_dir,
                                                       src.eval_split, image_fn)
        if sig.enabled:
          signed = add_signature(test_images, test_labels, np.random.default_rng((seed, 4)),
                                 sig.strength, sig.std, cfg.num_source_classes)
          evals["source_test"] = arrays_eval_set(signed, test_labels)
          evals["source_test_clean"] = arrays_eval_set(test_images, test_labels)
        else:
          evals["source_test"] = arrays_eval_set(test_images, test_labels)
    else:
      if exclude_target:
        raise ConfigError("data.source.exclude_target", "needs data.source.in_memory=True")
      if tfds_io.random_access(sb):   # array_record: read by index, exact O(1) resume
        source = RandomAccessSource(sb, src.name, data_dir, src.split, seed, image_size=size,
                                    channels=channels, augment=src.augment,
                                    prefetch=cfg.prefetch, process_index=process_index,
                                    process_count=process_count)
      else:
        source = StreamingSource(sb, src.name, data_dir, src.split, seed, image_size=size,
                                 channels=channels, augment=src.augment,
                                 shuffle_buffer=cfg.shuffle_buffer, prefetch=cfg.prefetch,
                                 process_index=process_index, process_count=process_count)
        # Check now (one line DataError at load time rather than mid-training).
        tfds_io.as_dataset(sb, src.name, data_dir, src.split,
                           decoders=tfds_io.skip_decoding(sb))
      if src.eval_split:
        evals["source_test"] = eval_set(sb, src.name, data_dir, src.eval_split, image_fn,
                                        image_shape)

  return TransferData(
      source=source, target_train=target_train, target_val=target_val,
      num_source_classes=cfg.num_source_classes, num_target_classes=cfg.num_target_classes,
      target_train_indices=train_idx, target_val_indices=val_idx,
      process_index=process_index, process_count=process_count, eval_data=evals,
      target_class_names=tfds_io.class_names(tb))
