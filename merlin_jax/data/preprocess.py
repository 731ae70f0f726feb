"""Image preprocessing: TF ops run inside tf.data, and the numpy shift of in-memory sources.

Images are float32 in [0, 1], [H, W, C] = (image_size, image_size, channels): resized when
the stored size differs (always for datasets of variable size), gray -> RGB by repeating the
channel, RGB -> gray by the channel mean. No mean/std normalisation here: a model that wants
it does it itself, so every pipeline and every test sees the same [0, 1] range.
"""

from __future__ import annotations

import numpy as np

from merlin_jax.data.tfds_io import import_tf
from merlin_jax.errors import ConfigError


def convert_channels(img, channels: int):
  """[h, w, c] -> [h, w, channels]: gray -> RGB repeats the channel, RGB -> gray averages."""
  tf = import_tf()
  c = img.shape[-1]
  if c == channels:
    return img
  if c == 1 and channels == 3:
    return tf.tile(img, [1, 1, 3])
  if channels == 1:
    return tf.reduce_mean(img, axis=-1, keepdims=True)
  raise ConfigError("data.channels", f"cannot convert {c} channels to {channels}")


def resize(img, size: int):
  """Bilinear (antialiased) resize to size x size; a no-op at that size already."""
  tf = import_tf()
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return tf.image.resize(img, (size, size), method="bilinear", antialias=True)


def eval_image(image, *, size: int, channels: int, crop: bool):
  """uint8 [h, w, c] -> float32 [size, size, channels] in [0, 1].

  crop=False: resize to size x size (small datasets). crop=True (ImageNet-style configs):
  resize the shorter side to size * 256/224, then take the central size x size crop.
  """
  tf = import_tf()
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
    img = resize(img, size)
  img = tf.clip_by_value(convert_channels(img, channels), 0.0, 1.0)
  img.set_shape([size, size, channels])
  return img


def inception_image(image, seed, *, size: int, channels: int):
  """Random-resized crop (area 8-100%, aspect 3/4-4/3) + horizontal flip; stateless in seed."""
  tf = import_tf()
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
  img = tf.clip_by_value(convert_channels(img, channels), 0.0, 1.0)
  img.set_shape([size, size, channels])
  return img


def light_shift_image(img, seed, *, max_shift: int):
  """A random integer shift of up to max_shift pixels (zero fill); img float [S, S, C]."""
  tf = import_tf()
  s, c = img.shape[0], img.shape[-1]
  padded = tf.pad(img, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
  return tf.image.stateless_random_crop(padded, [s, s, c], seed=seed)


def light_max_shift(size: int) -> int:
  """The largest shift of augment='light' for images of `size` pixels."""
  return max(1, round(size / 14))   # 2 px at 28 / 32 px


def shift_images(images: np.ndarray, shifts: np.ndarray, max_shift: int) -> np.ndarray:
  """Shift image i by shifts[i] = (dy, dx) pixels with zero fill. images [b, H, W, C]."""
  b, h, w, _ = images.shape
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
  rows = np.arange(h)[None, :] + m - shifts[:, :1]                     # [b, H]
  cols = np.arange(w)[None, :] + m - shifts[:, 1:]                     # [b, W]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
