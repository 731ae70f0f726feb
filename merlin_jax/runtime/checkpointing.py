"""Checkpoints (orbax) and weight files (safetensors). Never pickle.

WORKDIR/checkpoints/<step>/  the full train state, periodic + final, last few kept;
                             a run on a workdir with checkpoints resumes from the latest
                             good one (a corrupt latest one falls back to the previous).
WORKDIR/best/<step>/         the model selected on target validation (params + state).
WORKDIR/model.safetensors    the selected model exported flat ('params/backbone/...').

WORKDIR may be a URI (gs://bucket/dir): orbax writes there directly, every other file goes
through merlin_jax/runtime/fs.py.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from merlin_jax.runtime import fs
from merlin_jax.errors import UserError

from merlin_jax.runtime.layout import BEST, CHECKPOINTS, EXPORT  # noqa: E402,F401


def make_manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  if not fs.is_local(directory):
    _bound_tensorstore_retries()
  return ocp.CheckpointManager(
      os.path.abspath(directory) if fs.is_local(directory) else directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def _bound_tensorstore_retries() -> None:
  """Orbax writes array data through tensorstore, whose GCS driver retries a failed request
  32 times with delays up to 32 s: a save on a lost bucket then hangs for many minutes.
  Bounded like gcsfs's (fs.GCS_RETRIES): a lost bucket fails the save in seconds (exit 74;
  rerunning resumes from the last good checkpoint). Orbax builds every tensorstore context
  from these module dicts (tensorstore_utils.get_ts_context)."""
  from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils
  retries = {"max_retries": fs.GCS_RETRIES, "initial_delay": "1s", "max_delay": "4s"}
  for context in (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT):  # noqa: SLF001
    context.setdefault("gcs_request_retries", retries)


def abstract_like(tree):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)


def save(mngr: ocp.CheckpointManager, step: int, tree, wait: bool = True,
         metadata: dict | None = None) -> None:
  """`metadata` (JSON) is committed inside the step with the state, with its digest: the
  run's identity and records survive the loss of any file beside the checkpoints."""
  # The digest first: every committed checkpoint has one (a kill in between leaves at most
  # a digest without a checkpoint, harmless).
  digest = tree_digest(tree)
  _record_digest(mngr, step, digest)
  if step in mngr.all_steps():  # re-reached after a resume: replace (deterministic anyway)
    mngr.delete(step)
  meta = dict(metadata or {}, digest=digest)
  mngr.save(step, args=ocp.args.StandardSave(tree), force=True,
            custom_metadata=dict(meta, metadata_sha256=_metadata_hash(meta)))
  if wait:
    mngr.wait_until_finished()


# --- digests: a flipped bit in a checkpoint's array data restores silently in orbax 0.12
# (no checksums in OCDBT), so every save records a digest of the state in
# WORKDIR/checkpoint_digests.json and every restore checks it.

DIGESTS = "checkpoint_digests.json"


def _words(x):
  import jax.numpy as jnp
  from jax import lax
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return lax.bitcast_convert_type(x, bits).astype(jnp.uint32)   # 8 bytes: a pair of words


@jax.jit
def _digest_leaves(leaves):
  import jax.numpy as jnp
  out = []
  for x in leaves:
    w = _words(x).reshape(-1)
    # uint32 sums wrap: exact and order-free, so the same on any device layout / count.
    pos = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    out.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * pos, dtype=jnp.uint32)]))
  return out


def tree_digest(tree) -> str:
  """A checksum of every leaf's bits (computed where the arrays live; any sharding)."""
  import hashlib
  parts = jax.device_get(_digest_leaves(jax.tree.leaves(tree)))
  h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
  for p in parts:
    h.update(np.asarray(p, np.uint32).tobytes())
  return h.hexdigest()


def _digest_path(mngr) -> tuple[str, str]:
  directory = os.fspath(mngr.directory).rstrip("/")
  parent, name = directory.rsplit("/", 1) if not fs.is_local(directory) else (
      os.path.dirname(directory), os.path.basename(directory))
  return fs.join(parent, DIGESTS), name


def _read_digests(path: str) -> dict:
  try:
    return json.loads(fs.read_text(path))
  except (OSError, ValueError):
    return {}


def _record_digest(mngr, step: int, digest: str) -> None:
  if jax.process_index() != 0:
    return
  path, name = _digest_path(mngr)
  digests = _read_digests(path)
  keep = {f"{name}/{s}" for s in mngr.all_steps()}
  digests = {k: v for k, v in digests.items() if not k.startswith(f"{name}/") or k in keep}
  digests[f"{name}/{step}"] = digest
  fs.write_text(path, json.dumps(digests, indent=1, sort_keys=True))


def _metadata_hash(meta: dict) -> str:
  import hashlib
  return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


def step_metadata(directory: str, step: int) -> dict:
  """The metadata saved inside checkpoint `step` of `directory`: {} if none, unreadable, or
  changed on disk since it was saved (its own checksum: a damaged file that still parses as
  JSON must not pass for the run's identity or records)."""
  try:
    meta = json.loads(fs.read_text(fs.join(directory, str(step), "_CHECKPOINT_METADATA"))
                      ).get("custom_metadata")
  except (OSError, ValueError, AttributeError):
    return {}
  if not isinstance(meta, dict):
    return {}
  expected = meta.pop("metadata_sha256", None)
  if expected is not None and expected != _metadata_hash(meta):
    logging.warning("the metadata inside checkpoint %d in %s changed on disk since it was "
                    "saved; not using it", step, directory)
    return {}
  return meta


def _check_digest(mngr, step: int, tree) -> None:
  path, name = _digest_path(mngr)
  # Inside the step first: deleting checkpoint_digests.json must not disable the check.
  expected = (step_metadata(os.fspath(mngr.directory), step).get("digest")
              or _read_digests(path).get(f"{name}/{step}"))
  if expected is not None and tree_digest(tree) != expected:
    raise ValueError(f"checksum mismatch: the data of step {step} changed on disk after it "
                     f"was saved (recorded in {path})")


def restore_latest(mngr: ocp.CheckpointManager, target, step: int | None = None):
  """Restore the newest readable checkpoint into the structure/shardings of `target`.

  Returns (step, tree), or (None, target) when there is none. A checkpoint that fails to
  read (half-written, corrupted, an empty step dir) is skipped with a warning naming it;
  when an older one then restores, the unreadable newer ones are moved aside into
  `<directory>_corrupt/` (kept for inspection, and so that later saves and max_to_keep's
  clean-up never trip over them or delete the good ones instead) and the log says which
  step the run resumes from. When none restores, nothing is moved: UserError (a structure
  that no longer matches the code/config is not a corruption).

  `step`: only that step is acceptable (the model selected at state.best_step); newer
  steps are ignored (a run killed after saving them replays them anyway).
  """
  candidates = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    candidates = [s for s in candidates if s == step]
  failed = []
  for s in candidates:
    try:
      # Read through a throw-away manager: a failed read can leave a manager unusable for
      # saving (an empty step dir makes orbax 0.12 expect Composite args from then on).
      reader = ocp.CheckpointManager(mngr.directory)
      try:
        tree = reader.restore(s, args=ocp.args.StandardRestore(abstract_like(target)))
      finally:
        reader.close()
      _check_digest(mngr, s, tree)
    except Exception as e:  # noqa: BLE001 - any read failure means "not usable"
      failed.append((s, f"{type(e).__name__}: {_first_line(e)}"))
      logging.warning("checkpoint at step %d in %s is unreadable (%s); trying the previous one",
                      s, mngr.directory, failed[-1][1])
      continue
    if failed:
      moved = quarantine(mngr, [f for f, _ in failed])
      logging.warning(
          "RESUMING FROM AN OLDER CHECKPOINT: step(s) %s in %s could not be read (%s) and "
          "were moved to %s; resuming from step %d (the steps after it are recomputed)",
          ", ".join(str(f) for f, _ in failed), mngr.directory, failed[0][1], moved, s)
    return s, tree
  if failed:
    raise UserError(
        f"no checkpoint in {mngr.directory} can be read (step {failed[0][0]}: {failed[0][1]}); "
        "if the code or config changed, use a new --workdir; to start this run over, move "
        f"{mngr.directory} away")
  if step is not None and mngr.all_steps():
    raise UserError(f"{mngr.directory} has no checkpoint of step {step} (has "
                    f"{sorted(mngr.all_steps())}); use a new --workdir")
  return None, target


def keep_only(mngr: ocp.CheckpointManager, steps) -> None:
  """Deletes every step of `mngr` not in `steps` (process 0 decides, orbax deletes)."""
  for s in mngr.all_steps():
    if s not in set(steps):
      mngr.delete(s)


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else ""


def quarantine(mngr: ocp.CheckpointManager, steps) -> str:
  """Move step dirs (and half-written *.orbax-checkpoint-tmp* dirs) of `mngr` into
  `<directory>_corrupt/`; returns that path. Process 0 moves; all processes reload."""
  directory = os.fspath(mngr.directory)
  dest = directory.rstrip("/") + "_corrupt"
  if jax.process_index() == 0:
    fs.makedirs(dest)
    names = [str(s) for s in steps] + [n for n in fs.listdir(directory)
                                       if ".orbax-checkpoint-tmp" in n]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in names:
      src = fs.join(directory, name)
      if fs.exists(src):
        target = fs.join(dest, name)
        if fs.exists(target):
          target = f"{target}.{stamp}"
        fs.move(src, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("merlin_jax.runtime.checkpointing.quarantine")
  mngr.reload()
  return dest


# --- safetensors export / import ------------------------------------------------------


def flatten(tree) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  return {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}


def export_safetensors(path: str, tree, metadata: dict[str, str] | None = None) -> None:
  """Call on every process: FSDP-sharded leaves are gathered (a collective) first.
  `metadata`: str -> str stored in the file's header (merlin_jax/export.py)."""
  from merlin_jax.runtime import sharding
  tree = sharding.fetch(tree)
  if jax.process_index() != 0:
    return
  from merlin_jax import export
  from safetensors.numpy import save
  flat = flatten(tree)
  if metadata and export.KEY in metadata:   # its digest, checked at load
    metadata = export.seal(metadata, flat)
  # Bytes through fs.write_bytes: atomic (never a half-written weights file) on a disk and
  # on an object store, and created with the user's umask (safetensors' save_file: 0600).
  fs.write_bytes(path, save(flat, metadata=metadata))


def load_safetensors(path: str, what: str = "weights file",
                     missing_hint: str = f"set config.pretrained.path to a '{EXPORT}' written by "
                                         "a pretrain run (or a workdir containing one)"
                     ) -> dict[str, np.ndarray]:
  """{name: array} of a safetensors file; a missing or unreadable file is a UserError."""
  from safetensors.numpy import load, load_file
  if not fs.is_file(path):
    raise UserError(f"{what} {path} does not exist; {missing_hint}")
  try:
    flat = load_file(path) if fs.is_local(path) else load(fs.read_bytes(path))
  except Exception as e:  # noqa: BLE001
    raise UserError(f"{what} {path} is not a readable safetensors file ({type(e).__name__}); "
                    "re-export it or point config.pretrained.path at another file") from None
  from merlin_jax import export   # an export's digest (a flipped byte must not load)
  meta = export.header_metadata(path)
  if export.KEY in meta:
    try:
      fields = json.loads(meta[export.KEY])
    except ValueError:
      fields = {"format": export.FORMAT}   # unparsable: cannot match any digest
    export.verify(path, flat, fields if isinstance(fields, dict) else {"format": export.FORMAT})
  return flat


def fill_from_flat(target, flat: dict[str, np.ndarray], prefix: str, source: str,
                   missing_hint: str = "it was written for another model (check config.model "
                                       "against the pretrain run)"):
  """Replace the leaves of `target` under `prefix` by the entries of `flat` with the same key
  ('' = no prefix), cast to the target's dtypes.

  Every leaf must be present with the same shape: a mismatch is a user error naming the key.
  """
  tgt_flat = traverse_util.flatten_dict(target, sep="/")
  out = {}
  for k, v in tgt_flat.items():
    key = f"{prefix}/{k}" if prefix else k
    if key not in flat:
      raise UserError(f"{source} has no weight {key!r}; {missing_hint}")
    if tuple(flat[key].shape) != tuple(v.shape):
      raise UserError(f"{source}: weight {key!r} has shape {tuple(flat[key].shape)} but the model "
                      f"expects {tuple(v.shape)}; check config.model")
    out[k] = np.asarray(flat[key], dtype=v.dtype)
  return traverse_util.unflatten_dict(out, sep="/")


def resolve_pretrained(path: str) -> str:
  """A .safetensors file, or a workdir holding one."""
  if fs.is_dir(path):
    candidate = fs.join(path, EXPORT)
    if fs.is_file(candidate):
      return candidate
    raise UserError(f"config.pretrained.path={path} is a directory without {EXPORT}; point it at a "
                    "finished pretrain workdir or a .safetensors file")
  return path
