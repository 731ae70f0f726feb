"""The shared fixtures (the shared helpers: tests/helpers.py).

(The repo root goes on sys.path so the tests also run without pytest.ini's rootdir.)"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from tests.helpers import (  # noqa: E402
    StderrCapture, build_two_process_reference, run_cli, x64)


@pytest.fixture
def float64():
  """Run the test body in float64."""
  with x64():
    yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A workdir with a finished 10-step synthetic run (made through the CLI)."""
  workdir = tmp_path_factory.mktemp("finished")
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  try:
    code, err = run_cli([], StderrCapture(), workdir=workdir)
  finally:
    os.environ.pop("MERLIN_JAX_TENSORBOARD")
  assert code == 0, err[-3000:]
  return workdir


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory):
  """(workdir, compilation cache) of an uninterrupted 2-process CLI run (helpers.local_sh),
  built once for tests/test_slurm.py and tests/test_lifeline.py."""
  cache = tmp_path_factory.mktemp("two_process_jax_cache")
  return build_two_process_reference(tmp_path_factory.mktemp("two_process_reference"), cache), cache