"""Metrics to WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard, from process 0."""

from __future__ import annotations

import json
import logging as pylogging
import os
from typing import Any, Mapping

import jax
import numpy as np

JSONL = "metrics.jsonl"


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class MetricWriter:
  def __init__(self, workdir: str, resume_step: int = 0):
    self.is_main = jax.process_index() == 0
    self.path = os.path.join(workdir, JSONL)
    self._tb = None
    self.records = []   # every record in the file: saved inside each checkpoint (train.py)
    if not self.is_main:
      return
    truncate_jsonl(self.path, resume_step)
    if os.path.exists(self.path):
      self.records = read_jsonl(self.path)
    if os.environ.get("MERLIN_JAX_TENSORBOARD", "1") == "0":  # tests: skip TF's import (~15 s)
      return
    try:  # TensorBoard is optional at run time (clu + tensorboard in requirements.txt)
      from merlin_jax.data.tfds_io import import_tf
      import_tf()   # first, quietly (TF's C++ start-up lines); clu imports it
      from clu import metric_writers
      self._tb = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
    except Exception:  # pragma: no cover - missing optional dependency
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any], group: str = "") -> None:
    """One line of metrics.jsonl (keys as given); in TensorBoard the tags are
    `group/key` (train/, eval/, final/) so the dashboard groups them."""
    if not self.is_main:
      return
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    self.records.append(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      scalars = {f"{group}/{k}" if group else k: v for k, v in record.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
      if scalars:
        self._tb.write_scalars(int(step), scalars)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def truncate_jsonl(path: str, keep_upto_step: int) -> None:
  """Drop records past `keep_upto_step` (written after the checkpoint we resume from), so a
  resumed run's file equals an uninterrupted run's. Atomic: write aside, then rename."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a torn last line from a killed run
      continue
    if record.get("step", 0) <= keep_upto_step and not record.get("final"):
      kept.append(json.dumps(record) + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class _QuietLibraries(pylogging.Filter):
  """Hide the INFO chatter of orbax/TFDS; their warnings and errors still show."""

  def filter(self, record):
    if any(text in record.getMessage() for text in _NOISE):
      return False
    return record.levelno >= pylogging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "etils", "jax"))


# Warnings about the libraries' own internals that a user cannot act on.
_NOISE = ("`FeatureConnector.dtype` is deprecated",)


def quiet_library_logs() -> None:
  from absl import logging
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
