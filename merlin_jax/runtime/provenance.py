"""What a run ran with, recorded in WORKDIR/provenance.json at every (re)start.

The file is a JSON list with one record per start of the program on the workdir (a resumed
run appends one): the full config, package versions, devices, process count, git commit of
the code (with a `git_dirty` flag), the command line, host and time, and the step the start
resumed from. Enough to rerun a result with the same code, versions and device layout.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata

from merlin_jax.runtime import fs

FILE = "provenance.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "tensorflow", "tensorflow-cpu", "numpy", "ml-collections", "absl-py", "clu",
            "safetensors", "scikit-learn", "tokenizers")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def package_versions() -> dict:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def _git(*args) -> str | None:
  try:
    res = subprocess.run(["git", "-C", _PACKAGE_DIR, *args], capture_output=True, text=True,
                         timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return res.stdout.strip() if res.returncode == 0 else None


def git_info() -> dict:
  """{'git_commit': sha or 'unknown', 'git_dirty': bool or None} of merlin_jax's checkout."""
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return {"git_commit": "unknown", "git_dirty": None}
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def collect(config, *, start_step: int | None = None) -> dict:
  import jax
  devices = jax.devices()
  record = {
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "argv": list(sys.argv),
      "host": socket.gethostname(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "start_step": start_step,
      "resumed": bool(start_step),
      "process_count": jax.process_count(),
      "process_index": jax.process_index(),
      "device_count": len(devices),
      "local_device_count": jax.local_device_count(),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind if devices else None,
      "backend": jax.default_backend(),
      "packages": package_versions(),
      "config": json.loads(json.dumps(config.to_dict(), default=str)),
  }
  record.update(git_info())
  return record


def read(workdir: str) -> list[dict]:
  try:
    return json.loads(fs.read_text(fs.join(workdir, FILE)))
  except FileNotFoundError:
    return []


def record(workdir: str, config, *, start_step: int | None = None) -> dict:
  """Append this start's record to WORKDIR/provenance.json (process 0; atomic rewrite)."""
  import jax
  rec = collect(config, start_step=start_step)
  if jax.process_index() != 0:
    return rec
  try:
    records = read(workdir)
  except (OSError, ValueError):  # unreadable: keep it aside, start a new list
    path = fs.join(workdir, FILE)
    fs.move(path, path + ".unreadable")
    records = []
  records.append(rec)
  fs.write_text(fs.join(workdir, FILE), json.dumps(records, indent=1))
  return rec
