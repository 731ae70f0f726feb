"""The one file-system layer for a workdir: local paths and the URIs that orbax and TFDS
accept (`gs://bucket/path`, ...), all through `etils.epath` (what orbax uses itself).

Every file a run writes beside its checkpoints (config.json, provenance.json,
checkpoint_digests.json, metrics.jsonl, the lock, model.safetensors) goes through these
helpers; orbax writes the checkpoints straight to the same URI.

How a URI is reached: epath sends gs:// to TensorFlow's `tf.io.gfile` when TensorFlow is
installed, else to fsspec (gcsfs for gs://). Importing this module sets
`EPATH_USE_TF=false` (unless already set), so our files and orbax's go through gcsfs alike:
gcsfs uses the usual Google credentials (`gcloud auth application-default login`, a service
account, the metadata server) and honours `STORAGE_EMULATOR_HOST` (a local emulator), which
TF's GCS file system cannot (its endpoint is fixed). Orbax's array data goes through
tensorstore (its own GCS driver: same credentials; `TENSORSTORE_GCS_HTTP_URL` for an
emulator). With an emulator gcsfs's zonal/HNS bucket detection is switched off
(`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`): emulators have no Storage Control API, and
each lookup would wait a minute.

Writes are whole files: locally a write goes to `path.tmp` and is renamed over `path`
(never half a file); an object store has no rename but an object write is atomic there, so
the object is written directly. There are no directories on object stores: `makedirs` is
a no-op for URIs (gcsfs would create a missing *bucket*), and nothing can be appended: see
`append_text`; and no locks: see `ObjectLock`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid

os.environ.setdefault("EPATH_USE_TF", "false")
if os.environ.get("STORAGE_EMULATOR_HOST"):
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from absl import logging  # noqa: E402
from etils import epath  # noqa: E402  (after the environment above)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(path) -> bool:
  """True for a local path, False for a URI such as gs://bucket/dir."""
  return not _SCHEME.match(os.fspath(path))


def join(path, *parts: str) -> str:
  """os.path.join for local paths; '/'-joined for URIs (also on Windows)."""
  path = os.fspath(path)
  if is_local(path):
    return os.path.join(path, *parts)
  return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])


def as_path(path) -> epath.Path:
  return epath.Path(os.fspath(path))


def exists(path) -> bool:
  return as_path(path).exists()


def is_dir(path) -> bool:
  """A local directory, or a URI prefix that holds objects."""
  return as_path(path).is_dir()


def is_file(path) -> bool:
  return as_path(path).is_file()


def listdir(path) -> list[str]:
  """The names directly under `path` ([] when there is none)."""
  if is_local(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  p = as_path(path)
  if not p.is_dir():
    return []
  return sorted(child.name for child in p.iterdir())


def makedirs(path) -> None:
  """Creates a local directory and its parents; nothing for a URI (object stores have no
  directories; a gs:// bucket must exist)."""
  if is_local(path):
    os.makedirs(path, exist_ok=True)


def read_text(path) -> str:
  """The file's text; FileNotFoundError when it does not exist."""
  return as_path(path).read_text()


def read_bytes(path) -> bytes:
  return as_path(path).read_bytes()


def write_bytes(path, data: bytes) -> None:
  """Writes the whole file at once: readers see the old content or the new, never half."""
  if is_local(path):
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  else:
    as_path(path).write_bytes(data)   # one object write: atomic on GCS/S3


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_text(path, text: str) -> None:
  """Appends to a local file; a URI's object is read and rewritten (objects cannot be
  appended to: fine for small files such as metrics.jsonl)."""
  if is_local(path):
    with open(path, "a") as f:
      f.write(text)
    return
  try:
    old = read_text(path)
  except FileNotFoundError:
    old = ""
  write_text(path, old + text)


def remove(path) -> None:
  """Deletes a file (missing: nothing to do)."""
  try:
    as_path(path).unlink()
  except FileNotFoundError:
    pass


def move(src, dst) -> None:
  """Moves a file or a directory tree (on object stores, which cannot rename: each object
  is copied, then the source deleted)."""
  if is_local(src):
    import shutil
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  src, dst = as_path(src), as_path(dst)
  if not src.is_dir():
    dst.write_bytes(src.read_bytes())
    src.unlink()
    return
  _copy_tree(src, dst)
  src.rmtree()


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  # (epath's walk() yields gs:// roots without their scheme through fsspec: iterdir instead)
  for child in src.iterdir():
    if child.is_dir():
      _copy_tree(child, dst / child.name)
    else:
      (dst / child.name).write_bytes(child.read_bytes())


def remove_dir_if_empty(path) -> None:
  """Removes an empty local directory (URIs: nothing to remove, no directories there)."""
  if is_local(path) and os.path.isdir(path) and not os.listdir(path):
    os.rmdir(path)


# --- a lock where there are no locks ----------------------------------------------------

LOCK_RENEW_S = 30    # the holder rewrites its lock object this often
LOCK_STALE_S = 120   # not renewed for this long: its holder is gone (kill -9), taken over
LOCK_CHECK_S = 1.0   # pause between writing the lock object and reading it back


class ObjectLock:
  """A lock on an object store, which has none: the object `path` holds `record` (who
  holds it), a random token and `renewed` (seconds since the epoch), rewritten every
  LOCK_RENEW_S by a background thread and deleted by `release`. `acquire` refuses an object
  renewed less than LOCK_STALE_S ago (unless forced) and takes over a stale one.

  Best effort, said plainly: the object is written, then read back after LOCK_CHECK_S; two
  processes starting at the same moment see each other's token then, unless one stalls for
  longer than that between its check and its write. Freshness compares the clocks of two
  hosts (NTP keeps them far closer than LOCK_STALE_S)."""

  def __init__(self, path: str, record: dict):
    self.path = path
    self.token = uuid.uuid4().hex
    self.record = dict(record, token=self.token)
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict | None:
    try:
      info = json.loads(read_text(self.path))
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}   # damaged: nobody's
    return info if isinstance(info, dict) else {}

  def _write(self) -> None:
    write_text(self.path, json.dumps(dict(self.record, renewed=time.time())))

  def acquire(self, force: bool = False) -> dict | None:
    """None when taken; else the holder's record with `age_s`, seconds since it was
    renewed (None: it took the lock at the same moment as this process)."""
    held = self._read()
    age = time.time() - float(held.get("renewed", 0)) if held else None
    if held and age < LOCK_STALE_S:
      if not force:
        return dict(held, age_s=age)
      logging.warning("taking over the lock %s held by pid %s on host %s (renewed %.0f s "
                        "ago), as asked", self.path, held.get("pid"), held.get("host"), age)
    elif held:
      logging.warning("taking over the stale lock %s (pid %s on host %s, not renewed for "
                        "%.0f s: that process is gone)", self.path, held.get("pid"),
                        held.get("host"), age)
    self._write()
    time.sleep(LOCK_CHECK_S)
    now = self._read() or {}
    if now.get("token") != self.token:
      return dict(now, age_s=None)
    self._thread = threading.Thread(target=self._renew, name="merlin_jax-object-lock",
                                    daemon=True)
    self._thread.start()
    return None

  def _renew(self) -> None:
    while not self._stop.wait(LOCK_RENEW_S):
      try:
        held = self._read()
        if held and held.get("token") != self.token:
          logging.error("the lock %s was taken over by pid %s on host %s: two processes "
                          "now write beside it; stop one of them", self.path, held.get("pid"),
                          held.get("host"))
          return
        self._write()
      except Exception as e:  # noqa: BLE001 - a network blip: try again next time
        logging.warning("could not renew the lock %s (%s)", self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if (self._read() or {}).get("token") == self.token:
        remove(self.path)
    except Exception as e:  # noqa: BLE001 - it goes stale anyway
      logging.warning("could not delete the lock %s (%s); it goes stale in %d s", self.path,
                        e, LOCK_STALE_S)
