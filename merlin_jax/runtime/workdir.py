"""The workdir: one run per workdir, its identity, and what may change when it is resumed.

* `lock(workdir)`: an OS lock (`fcntl.flock` on the workdir itself, process 0) held for the
  whole run; a second run on the same workdir stops with "in use by pid N on host H". The
  kernel drops it when the holder dies (kill -9 included), so nothing is left stuck.
  An object store (gs://...) has no locks: there the lock is an object, WORKDIR/.lock, with
  the holder's host, pid and a time it renews (`fs.ObjectLock`).
* `check(config, workdir)`: whether `config` may resume the run in `workdir`, compared with
  the config recorded inside its checkpoints (`checkpointing.step_metadata`) and with
  config.json. Reads only: bad input leaves the workdir as it was.
* `commit(config, workdir)`: writes config.json and the lock's owner record, once every
  start-up check has passed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket

import flax
import jax
import numpy as np
from absl import logging

from merlin_jax.runtime import checkpointing, fs
from merlin_jax import keys
from merlin_jax.config_base import base_config
from merlin_jax.errors import ConfigError, UserError

CONFIG_FILE = "config.json"
OWNER_FILE = ".lock"   # who holds the lock (information only: the flock is the lock;
                       # on an object store this object is the lock)
# On an object store: takes over a fresh lock object at once (fs.ObjectLock: a stale one,
# not renewed for fs.LOCK_STALE_S, is taken over anyway).
BREAK_LOCK_ENV = "MERLIN_JAX_BREAK_LOCK"
# Keys that may change when resuming a workdir: those declared `resume=True` in
# merlin_jax/keys.py (they do not change what is computed).
RESUMABLE_CHANGES = keys.RESUMABLE


def flat_config(config) -> dict:
  """{'section.key': value} of a ConfigDict (what config.json holds)."""
  return flax.traverse_util.flatten_dict(config.to_dict(), sep=".")


def json_config(config) -> dict:
  """flat_config as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(flat_config(config), default=str))


def _checkpoint_steps(workdir: str) -> list[int]:
  directory = fs.join(workdir, checkpointing.CHECKPOINTS)
  return sorted(int(n) for n in fs.listdir(directory) if n.isdigit())


# --- the lock ------------------------------------------------------------------------------


def _owner(workdir: str) -> str:
  try:
    info = json.loads(fs.read_text(fs.join(workdir, OWNER_FILE)))
    return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that is still starting up"


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _owner_record(**extra) -> dict:
  return dict({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}, **extra)


def _try_lock(workdir: str):
  """-> (fd or None, error message or None)."""
  import fcntl
  fd = os.open(workdir, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None, (f"workdir {workdir} is in use by another run ({_owner(workdir)}); wait for "
                  "it to finish or stop it, or use another --workdir")
  except OSError as e:  # a file system without locks: run unprotected, but say so
    logging.warning("cannot lock workdir %s (%s); make sure no other run uses it", workdir,
                    e.strerror)
  return fd, None


def _acquire_object_lock(workdir: str) -> tuple[fs.ObjectLock | None, str | None]:
  """-> (the held lock, None) or (None, the error message) for a workdir on an object
  store, which has no locks (`fs.ObjectLock`: a renewed lock object, WORKDIR/.lock)."""
  held = fs.ObjectLock(fs.join(workdir, OWNER_FILE), _owner_record())
  holder = held.acquire(force=os.environ.get(BREAK_LOCK_ENV) == "1")
  if holder is None:
    logging.info("workdir %s is on an object store, which has no file locks: the lock is the "
                 "object %s, renewed every %d s", workdir, held.path, fs.LOCK_RENEW_S)
    return held, None
  who = f"pid {holder.get('pid')} on host {holder.get('host')}"
  if holder.get("age_s") is None:
    return None, (f"workdir {workdir} is in use by another run ({who}, started at the same "
                  "time as this one); use another --workdir")
  age = holder["age_s"]
  return None, (f"workdir {workdir} is in use by another run ({who}, started "
                f"{holder.get('started')}; its lock object {held.path} was renewed {age:.0f} s "
                "ago); wait for it to finish or stop it, or use another --workdir (if that run "
                f"is gone: the lock is taken over {fs.LOCK_STALE_S - age:.0f} s from now, or at "
                f"once with {BREAK_LOCK_ENV}=1)")


@contextlib.contextmanager
def lock(workdir: str):
  """Holds the workdir's lock for the block (process 0 takes it for every process): a
  flock locally, a lock object (`fs.ObjectLock`) on an object store."""
  fd, error, held = None, None, None
  if jax.process_index() == 0:
    if fs.is_local(workdir):
      fd, error = _try_lock(workdir)
    else:
      held, error = _acquire_object_lock(workdir)
  if jax.process_count() > 1:  # every process stops, or none
    from jax.experimental import multihost_utils
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(ok) and error is None:
      error = f"workdir {workdir} is in use by another run (see process 0's message)"
  if error:
    raise UserError(error)
  try:
    yield
  finally:
    if fd is not None:
      _remove_owner_record(workdir)   # while still held: no lock litter in a workdir
      os.close(fd)   # releases the flock
    if held is not None:
      held.release()


def _remove_owner_record(workdir: str) -> None:
  path = fs.join(workdir, OWNER_FILE)
  try:
    if json.loads(fs.read_text(path)).get("pid") == os.getpid():
      fs.remove(path)
  except (OSError, ValueError, AttributeError):
    pass   # none, not ours, or unreadable: left as it is


# --- identity and resume ---------------------------------------------------------------


def make_dir(workdir: str) -> bool:
  """Creates `workdir` if needed and checks it is writable; -> whether it was created."""
  if not fs.is_local(workdir):
    return _check_remote(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file; pass a directory path with --workdir")
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")  # hosts may share it
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror}); choose another "
                    "--workdir") from None
  return created


def _check_remote(workdir: str) -> bool:
  """A workdir URI (gs://bucket/dir): reachable and writable? (Object stores have no
  directories: nothing to create, and a missing bucket is not created.) -> False."""
  probe = fs.join(workdir, f".write_test.{jax.process_index()}")
  fs.check_reachable(workdir)   # unreachable: one line in seconds
  try:
    fs.write_text(probe, "ok")
    fs.remove(probe)
  except Exception as e:  # noqa: BLE001 - any failure: one line naming the workdir
    text = " ".join(str(e).split())[:200]
    hint = ("the bucket does not exist" if isinstance(e, FileNotFoundError) else
            f"{type(e).__name__}{': ' + text if text else ''}")
    raise UserError(f"workdir {workdir} cannot be written ({hint}); check the bucket name, "
                    "your credentials (gcloud auth application-default login) and the network, "
                    "or choose another --workdir") from None
  return False


def recorded_config(workdir: str) -> dict | None:
  """The config of the run in `workdir` as recorded inside its newest checkpoint that has
  one; None when no checkpoint records it (none yet, or written by an older version)."""
  directory = fs.join(workdir, checkpointing.CHECKPOINTS)
  for step in reversed(_checkpoint_steps(workdir)):
    meta = checkpointing.step_metadata(directory, step)
    if isinstance(meta.get("config"), dict):
      return meta["config"]
  return None


def _read_config_json(path: str) -> dict | None:
  try:
    old = json.loads(fs.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    return {"__unreadable__": f"{type(e).__name__}: {e}"}
  return old if isinstance(old, dict) else {"__unreadable__": "not a JSON object"}


def _changed(old: dict, new: dict) -> list[str]:
  # A key added to the schema after the run was written (absent from its record) is
  # unchanged when it has the default that reproduces the old behaviour.
  defaults = json.loads(json.dumps(flat_config(base_config()), default=str))
  old = dict(old, **{k: defaults[k] for k in set(new) - set(old) if k in defaults})
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  # The schedule of a decaying learning rate spans total_steps: then it fixes the run too.
  if (new.get("optimizer.schedule") != "constant"
      and old.get("total_steps") != new.get("total_steps")):
    changed.insert(0, "total_steps")
  return changed


def check(config, workdir: str) -> None:
  """Raises UserError unless `config` may start or resume the run in `workdir` (reads only)."""
  owner = fs.join(workdir, OWNER_FILE)
  if fs.is_local(workdir) and os.path.isdir(owner):   # commit() could not write it
    raise UserError(f"{owner} is a directory, where merlin_jax records who holds the "
                    "workdir's lock; remove it (it is not merlin_jax's) or use another "
                    "--workdir")
  steps = _checkpoint_steps(workdir)
  if not steps:
    return   # nothing to resume: a fresh start (config.json is rewritten by commit)
  new = json_config(config)
  recorded = recorded_config(workdir)
  on_disk = _read_config_json(fs.join(workdir, CONFIG_FILE))
  if recorded is None and (on_disk is None or "__unreadable__" in on_disk):
    why = "no config.json" if on_disk is None else (
        f"an unreadable config.json ({on_disk['__unreadable__'][:120]})")
    raise UserError(f"workdir {workdir} holds checkpoints but {why}, and the checkpoints do "
                    "not record their config (written by an older version), so nothing "
                    "says which run they belong to; restore config.json, or use a new "
                    "--workdir")
  for what, old in (("its checkpoints", recorded), (CONFIG_FILE, on_disk)):
    if old is None or "__unreadable__" in old:
      continue   # recorded in the checkpoints: config.json is rewritten by commit
    changed = _changed(old, new)
    if changed:
      k = changed[0]
      hint = ("; the learning-rate schedule spans total_steps" if k == "total_steps" else "")
      raise UserError(f"workdir {workdir} holds a run with a different config ({k}: "
                      f"{old.get(k)!r} there, {new.get(k)!r} now) according to {what}{hint}; "
                      "use a new --workdir or the same config to resume")
  # A result labelled total_steps must not come from a later step.
  if max(steps) > config.total_steps:
    raise ConfigError("total_steps", f"{config.total_steps}, but the checkpoints in {workdir} "
                      f"reach step {max(steps)}; use total_steps >= {max(steps)} or a new "
                      "--workdir")


def prepare(config, workdir: str) -> None:
  """make_dir + check + commit (for callers without a start-up of their own)."""
  make_dir(workdir)
  check(config, workdir)
  commit(config, workdir)


def commit(config, workdir: str) -> None:
  """Process 0 writes config.json and who holds the lock (after every start-up check)."""
  if jax.process_index() != 0:
    return
  saved = fs.join(workdir, CONFIG_FILE)
  on_disk = _read_config_json(saved)
  if on_disk is not None and "__unreadable__" in on_disk:
    logging.warning("%s was unreadable (%s); rewritten from the config recorded in the "
                    "checkpoints", saved, on_disk["__unreadable__"][:200])
  fs.write_text(saved, json.dumps(flat_config(config), indent=1, sort_keys=True, default=str))
  if fs.is_local(workdir):   # on an object store the lock object already says who holds it
    fs.write_text(fs.join(workdir, OWNER_FILE), json.dumps(_owner_record()))


def restore_metrics(workdir: str, saved: list, step: int) -> None:
  """Makes metrics.jsonl hold the records saved with checkpoint `step` (process 0): a file
  damaged, cut or deleted since is rewritten from them, with a warning saying so."""
  from merlin_jax.runtime.metrics import JSONL
  if jax.process_index() != 0:
    return
  path = fs.join(workdir, JSONL)
  current = []
  try:
    for line in fs.read_text(path).splitlines(keepends=True):
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        current.append(None)   # damaged (a torn last line is dropped by the writer anyway)
        continue
      if isinstance(record, dict) and record.get("step", 0) <= step and not record.get("final"):
        current.append(record)
  except FileNotFoundError:
    current = None
  want = [json.dumps(r, sort_keys=True) for r in saved]
  have = [json.dumps(r, sort_keys=True) for r in current or [] if r is not None]
  if have == want:
    return
  what = ("missing" if current is None else
          f"different from the {len(want)} records saved with the checkpoint "
          f"({len(set(want) - set(have))} missing or changed, {len(set(have) - set(want))} "
          "not in it)")
  logging.warning("%s was %s; rewritten from checkpoint %d (records up to step %d)", path,
                  what, step, step)
  fs.write_text(path, "".join(json.dumps(r) + "\n" for r in saved))
