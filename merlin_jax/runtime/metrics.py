"""Metrics to WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard, from process 0.

On an object store (a gs:// workdir) metrics.jsonl is rewritten whole at each write (objects
cannot be appended to) and TensorBoard's events go through TensorFlow's own file system
(`tf.summary`): the real GCS works, an emulator cannot (TF's GCS endpoint is fixed), so with
STORAGE_EMULATOR_HOST set a gs:// workdir gets no TensorBoard events, and the log says so.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from merlin_jax.runtime import fs

JSONL = "metrics.jsonl"


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class MetricWriter:
  def __init__(self, workdir: str, resume_step: int = 0):
    self.is_main = jax.process_index() == 0
    self.path = fs.join(workdir, JSONL)
    self._local = fs.is_local(workdir)
    self._tb = None
    self.records = []   # every record in the file: saved inside each checkpoint (train.py)
    if not self.is_main:
      return
    truncate_jsonl(self.path, resume_step)
    if fs.exists(self.path):
      self.records = read_jsonl(self.path)
    if os.environ.get("MERLIN_JAX_TENSORBOARD", "1") == "0":  # tests: skip TF's import (~15 s)
      return
    tb_dir = fs.join(workdir, "tensorboard")
    if not self._local and os.environ.get("STORAGE_EMULATOR_HOST"):
      logging.warning("no TensorBoard events for %s: tf.summary writes through TensorFlow's "
                      "GCS file system, which cannot reach the emulator at "
                      "STORAGE_EMULATOR_HOST=%s (its endpoint is fixed); metrics.jsonl has "
                      "every metric", workdir, os.environ["STORAGE_EMULATOR_HOST"])
      return
    try:  # TensorBoard is optional at run time (clu + tensorboard in requirements.txt)
      from merlin_jax.data.tfds_io import import_tf
      import_tf()   # first, quietly (TF's C++ start-up lines); clu imports it
      from clu import metric_writers
      self._tb = metric_writers.SummaryWriter(tb_dir)
    except Exception as e:  # noqa: BLE001 - a missing optional dependency, an unwritable URI
      logging.warning("no TensorBoard events in %s (%s: %s); metrics.jsonl has every metric",
                      tb_dir, type(e).__name__, " ".join(str(e).split())[:200])
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any], group: str = "") -> None:
    """One line of metrics.jsonl (keys as given); in TensorBoard the tags are
    `group/key` (train/, eval/, final/) so the dashboard groups them."""
    if not self.is_main:
      return
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    self.records.append(record)
    if self._local:
      fs.append_text(self.path, json.dumps(record) + "\n")
    else:   # an object cannot be appended to: rewrite it from the records (all of them)
      fs.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
    if self._tb is not None:
      scalars = {f"{group}/{k}" if group else k: v for k, v in record.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
      if scalars:
        self._tb.write_scalars(int(step), scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's hyperparameters (TensorBoard's HPARAMS tab); metrics.jsonl is unchanged
    (config.json holds them)."""
    if self._tb is not None:
      self._tb.write_hparams(dict(hparams))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def truncate_jsonl(path: str, keep_upto_step: int) -> None:
  """Drop records past `keep_upto_step` (written after the checkpoint we resume from), so a
  resumed run's file equals an uninterrupted run's. Atomic (runtime/fs.py)."""
  try:
    lines = fs.read_text(path).splitlines(keepends=True)
  except FileNotFoundError:
    return
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a torn last line from a killed run
      continue
    if record.get("step", 0) <= keep_upto_step and not record.get("final"):
      kept.append(json.dumps(record) + "\n")
  fs.write_text(path, "".join(kept))


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


class _QuietLibraries(pylogging.Filter):
  """Hide the INFO chatter of orbax/TFDS/gcsfs; their warnings and errors still show, except
  gcsfs's log of an exception it raises (a traceback): the caller reports it, in one line."""

  def filter(self, record):
    if any(text in record.getMessage() for text in _NOISE):
      return False
    if record.exc_info and "/gcsfs/" in record.pathname:
      return False
    if record.exc_info and any(f"/{lib}/" in record.pathname for lib in _TRACEBACK_LIBS):
      # orbax logs the traceback of a failed background save, which the run then raises
      # and reports in one line: its own line stays, the traceback goes.
      record.exc_info, record.exc_text = None, None
    return record.levelno >= pylogging.WARNING or not any(
        f"/{lib}/" in record.pathname
        for lib in ("orbax", "tensorflow_datasets", "etils", "jax", "gcsfs", "fsspec"))


_TRACEBACK_LIBS = ("orbax", "etils", "fsspec", "tensorstore", "absl/logging")
# Warnings about the libraries' own internals that a user cannot act on.
_NOISE = ("`FeatureConnector.dtype` is deprecated",)


def quiet_library_logs() -> None:
  from absl import logging
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
