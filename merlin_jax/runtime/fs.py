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

import fsspec  # noqa: E402
from absl import logging  # noqa: E402
from etils import epath  # noqa: E402  (after the environment above)

# No listing cache for object stores: this process is never their only writer (orbax's
# array data goes through tensorstore, and on a pod every host writes), and fsspec answers
# "does not exist" for any path under a listed directory that the cached listing lacks.
# Seen: a rerun's save of best/<step> failed because orbax's check of best/<step>/default,
# just written by tensorstore, was answered from a listing of best/ taken before. Every
# question now goes to the store (tests/test_gcs.py: ..._another_writer_...).
for _protocol in ("gs", "gcs"):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)

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
  path = os.fspath(path)
  if not is_local(path):
    _bound_gcs_retries()
  return epath.Path(path)


# gcsfs retries a failed request 6 times with a backoff of 1 + 2 + ... + 32 s: a minute per
# call when the storage is gone, several minutes for a run that makes a few calls on its way
# out. GCS_RETRIES (MERLIN_JAX_GCS_RETRIES) tries bound that to ~1 + 2 s per call; a blip
# longer than that fails the run with exit 74, and rerunning resumes from the last checkpoint.
GCS_RETRIES = int(os.environ.get("MERLIN_JAX_GCS_RETRIES", "3"))
_gcs_bounded = False


def _bound_gcs_retries() -> None:
  global _gcs_bounded
  if _gcs_bounded:
    return
  _gcs_bounded = True
  try:
    import gcsfs.core
    import gcsfs.retry
  except ImportError:
    return
  cls = gcsfs.core.GCSFileSystem
  for name in ("_request", "_get_file_request", "_get_file_concurrent"):
    inner = getattr(getattr(cls, name, None), "__wrapped__", None)
    if inner is not None:   # the undecorated coroutine, re-decorated with fewer tries
      setattr(cls, name, gcsfs.retry.retry_request(retries=GCS_RETRIES)(inner))


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
  return read_bytes(path).decode("utf-8")


def read_bytes(path) -> bytes:
  """The file's bytes. A URI's object is fetched whole, as it is now: through epath,
  gcsfs read as many bytes as its cached size of the object said, so an object rewritten
  meanwhile by another writer (the workdir lock, renewed every few seconds) came back cut
  short (JSONDecodeError on the lock, seen with the GCS emulator)."""
  if is_local(path):
    return as_path(path).read_bytes()
  import fsspec
  fsys, p = fsspec.core.url_to_fs(os.fspath(path))
  fsys.invalidate_cache(p)
  return fsys.cat_file(p)


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


# --- reachability: fail in seconds, not after the client's minute of retries ---------------

PROBE_TIMEOUT_S = 5.0


def check_reachable(path, timeout_s: float = PROBE_TIMEOUT_S) -> None:
  """For a gs:// path: StorageError unless the storage endpoint answers HTTP within
  `timeout_s` (any answer, an auth error included: the network works). gcsfs retries a
  refused connection for about a minute before it gives up; this says so in seconds."""
  import urllib.error
  import urllib.request
  from merlin_jax.errors import StorageError
  path = os.fspath(path)
  if not path.startswith("gs://"):
    return
  endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
  if not endpoint.startswith(("http://", "https://")):
    endpoint = "http://" + endpoint
  bucket = path[len("gs://"):].split("/", 1)[0]
  try:
    urllib.request.urlopen(f"{endpoint.rstrip('/')}/storage/v1/b/{bucket}",
                           timeout=timeout_s).close()
  except urllib.error.HTTPError:
    return   # it answered
  except (OSError, ValueError) as e:   # URLError, refused, timed out, no route, DNS
    reason = getattr(e, "reason", e)
    raise StorageError(
        f"storage unreachable: {path} (endpoint {endpoint}) did not answer within "
        f"{timeout_s:.0f} s ({type(reason).__name__}: {' '.join(str(reason).split())[:120]}); "
        "check the network and the endpoint (STORAGE_EMULATOR_HOST for an emulator), then "
        "rerun the same command") from None


# --- a lock where there are no locks ----------------------------------------------------

LOCK_RENEW_S = 30    # the holder rewrites its lock object this often
LOCK_STALE_S = 120   # not renewed for this long: its holder is gone (kill -9), taken over
LOCK_CHECK_S = 1.0   # pause between writing the lock object and reading it back


def _holder_gone(held: dict) -> bool:
  """The lock's holder ran on this host and that process no longer exists."""
  import socket
  if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
    return False
  try:
    os.kill(held["pid"], 0)
  except ProcessLookupError:
    return True
  except OSError:   # exists (another user's)
    return False
  return False


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
    if held and age < LOCK_STALE_S and _holder_gone(held):
      logging.warning("taking over the lock %s of pid %s on this host, which is gone (it "
                      "could not delete its lock: storage lost, or kill -9)", self.path,
                      held.get("pid"))
    elif held and age < LOCK_STALE_S:
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
    renewed = time.time()
    while not self._stop.wait(LOCK_RENEW_S):
      try:
        held = self._read()
        if held and held.get("token") != self.token:
          logging.error("the lock %s was taken over by pid %s on host %s: two processes "
                          "now write beside it; stop one of them", self.path, held.get("pid"),
                          held.get("host"))
          return
        self._write()
        renewed = time.time()
      except Exception as e:  # noqa: BLE001 - a network blip: try again next time
        logging.warning("could not renew the lock %s (%s)", self.path, " ".join(str(e).split()))
        if time.time() - renewed > LOCK_STALE_S / 2:   # another run may take it over soon:
          self._lost(e)                                # stop this one first
          return

  def _lost(self, e: Exception) -> None:
    from merlin_jax.runtime import preemption
    from merlin_jax.errors import StorageError
    preemption.abort(StorageError(
        f"storage unreachable: the lock {self.path} could not be renewed for "
        f"{LOCK_STALE_S / 2:.0f} s ({type(e).__name__}); stopped before another run could "
        "take the workdir over; check the storage and rerun the same command: it resumes "
        "from the last good checkpoint"), 74)

  def release(self, timeout_s: float = 10.0) -> None:
    """Stops renewing and deletes the lock object; bounded by `timeout_s` (storage that is
    gone must not hold the exit: the object then goes stale by itself)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout_s)

    def delete():
      try:
        if (self._read() or {}).get("token") == self.token:
          remove(self.path)
      except Exception as e:  # noqa: BLE001 - it goes stale anyway
        logging.warning("could not delete the lock %s (%s); it goes stale in %d s",
                        self.path, " ".join(str(e).split())[:200], LOCK_STALE_S)

    worker = threading.Thread(target=delete, name="merlin_jax-lock-release", daemon=True)
    worker.start()
    worker.join(timeout_s)
