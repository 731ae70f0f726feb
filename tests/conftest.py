"""Shared test helpers: float64 for gradient checks, numpy-filled backbone variables.

(The repo root goes on sys.path so the tests also run without pytest.ini's rootdir.)"""

from __future__ import annotations

import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import pytest  # noqa: E402


@contextlib.contextmanager
def x64():
  """float64 inside the block only (restores the previous setting afterwards)."""
  if hasattr(jax, "enable_x64"):
    with jax.enable_x64(True):
      yield
  else:  # older jax: flip the global flag and put it back
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
      yield
    finally:
      jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def float64():
  """Run the test body in float64."""
  with x64():
    yield


def numpy_init(backbone, example_shape, rng):
  """A backbone's (params, state) with Flax's structure, filled by numpy.

  Flax's own init compiles every initializer (seconds on a busy 2-core machine) and is not
  what these tests are about. Kernels ~ N(0, 1/fan_in), biases small, batch-norm scale 1,
  running mean 0 and variance 1 (Flax's defaults).
  """
  import jax.numpy as jnp
  import numpy as np

  shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros(example_shape)))

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    if name == "bias":
      return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return np.zeros(leaf.shape, leaf.dtype)
    raise AssertionError(f"unexpected variable {jax.tree_util.keystr(path)}")

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory):
  """(workdir, compilation cache) of an uninterrupted 2-process CLI run (tests/two_process.py),
  built once for tests/test_slurm.py and tests/test_lifeline.py."""
  from tests import two_process
  cache = tmp_path_factory.mktemp("two_process_jax_cache")
  return two_process.build_reference(tmp_path_factory.mktemp("two_process_reference"), cache), cache
