"""The TFDS environment: TensorFlow and TFDS imported lazily and quietly, the default data
dir, one-line exception text. Its own module so that modules tfds_io dispatches to
(own_data) use these without importing tfds_io back."""

from __future__ import annotations

import contextlib
import functools
import os
import sys


@contextlib.contextmanager
def _quiet_stderr_fd():
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


@functools.lru_cache(maxsize=None)
def import_tf():
  """The tensorflow module, with the GPU hidden from it.

  TF's C++ start-up lines (oneDNN, CPU features, "log messages before absl::InitializeLog")
  go straight to file descriptor 2 during the import: hidden unless
  MERLIN_JAX_TF_STARTUP_LOGS=1. A failing import still raises (and then prints) as usual.
  """
  if os.environ.get("MERLIN_JAX_TF_STARTUP_LOGS") == "1":
    import tensorflow as tf
  else:
    with _quiet_stderr_fd():
      import tensorflow as tf
  try:  # the accelerator belongs to JAX: TF only reads files and decodes images on CPU
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised by someone else
    pass
  return tf


def import_tfds():
  """The tensorflow_datasets module, with our builders registered."""
  import_tf()
  import tensorflow_datasets as tfds
  from merlin_jax.data import builders  # noqa: F401  registers our builders
  return tfds


def first_line(e: Exception) -> str:
  """The first line of an exception's message (its type name when it has none)."""
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def default_data_dir() -> str:
  """TFDS's data dir when none is given: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
