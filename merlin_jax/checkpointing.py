"""Checkpoints (orbax) and weight files (safetensors). Never pickle.

WORKDIR/checkpoints/<step>/  the full train state, periodic + final, last few kept;
                             a run on a workdir with checkpoints resumes from the latest
                             good one (a corrupt latest one falls back to the previous).
WORKDIR/best/<step>/         the model selected on target validation (params + state).
WORKDIR/model.safetensors    the selected model exported flat ('params/backbone/...').
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from merlin_jax.errors import UserError

CHECKPOINTS = "checkpoints"
BEST = "best"
EXPORT = "model.safetensors"


def make_manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def abstract_like(tree):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)


def save(mngr: ocp.CheckpointManager, step: int, tree, wait: bool = True) -> None:
  if step in mngr.all_steps():  # re-reached after a resume: replace (deterministic anyway)
    mngr.delete(step)
  mngr.save(step, args=ocp.args.StandardSave(tree), force=True)
  if wait:
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, target):
  """Restore the newest readable checkpoint into the structure/shardings of `target`.

  Returns (step, tree) or (None, target) when there is none. A checkpoint that fails to
  read (half-written, corrupted) is skipped with a warning naming it.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      tree = mngr.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
      return step, tree
    except Exception as e:  # noqa: BLE001 - any read failure means "not usable"
      logging.warning("checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one",
                      step, mngr.directory, type(e).__name__, str(e).splitlines()[0][:200])
  return None, target


# --- safetensors export / import ------------------------------------------------------


def flatten(tree) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  return {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}


def export_safetensors(path: str, tree) -> None:
  """Call on every process: FSDP-sharded leaves are gathered (a collective) first."""
  from merlin_jax import sharding
  tree = sharding.fetch(tree)
  if jax.process_index() != 0:
    return
  from safetensors.numpy import save_file
  tmp = path + ".tmp"
  save_file(flatten(tree), tmp)
  os.replace(tmp, path)  # atomic: never a half-written weights file


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  if not os.path.isfile(path):
    raise UserError(f"weights file {path} does not exist; set config.pretrained.path to a "
                    f"'{EXPORT}' written by a pretrain run (or a workdir containing one)")
  try:
    return load_file(path)
  except Exception as e:  # noqa: BLE001
    raise UserError(f"weights file {path} is not a readable safetensors file ({type(e).__name__}); "
                    "re-export it or point config.pretrained.path at another file") from None


def fill_from_flat(target, flat: dict[str, np.ndarray], prefix: str, source: str):
  """Replace the leaves of `target` under `prefix` by the entries of `flat` with the same key.

  Every leaf must be present with the same shape: a mismatch is a user error naming the key.
  """
  tgt_flat = traverse_util.flatten_dict(target, sep="/")
  out = {}
  for k, v in tgt_flat.items():
    key = f"{prefix}/{k}"
    if key not in flat:
      raise UserError(f"{source} has no weight {key!r}; it was written for another model "
                      "(check config.model against the pretrain run)")
    if tuple(flat[key].shape) != tuple(v.shape):
      raise UserError(f"{source}: weight {key!r} has shape {tuple(flat[key].shape)} but the model "
                      f"expects {tuple(v.shape)}; check config.model")
    out[k] = np.asarray(flat[key], dtype=v.dtype)
  return traverse_util.unflatten_dict(out, sep="/")


def resolve_pretrained(path: str) -> str:
  """A .safetensors file, or a workdir holding one."""
  if os.path.isdir(path):
    candidate = os.path.join(path, EXPORT)
    if os.path.isfile(candidate):
      return candidate
    raise UserError(f"config.pretrained.path={path} is a directory without {EXPORT}; point it at a "
                    "finished pretrain workdir or a .safetensors file")
  return path
