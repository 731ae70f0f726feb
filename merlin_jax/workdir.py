"""The workdir's identity: config.json, and what may change when a run is resumed."""

from __future__ import annotations

import json
import os

import flax
import jax

from merlin_jax import checkpointing
from merlin_jax.config_base import base_config
from merlin_jax.errors import ConfigError, UserError

CONFIG_FILE = "config.json"
# Keys that may change when resuming a workdir (they do not change what is computed).
RESUMABLE_CHANGES = ("mesh.data", "mesh.model", "mesh.param_sharding", "mesh.fsdp_min_size",
                     "total_steps", "eval.every", "log_every", "checkpoint_every",
                     "keep_checkpoints", "pretrained.path")


def flat_config(config) -> dict:
  """{'section.key': value} of a ConfigDict (what config.json holds)."""
  return flax.traverse_util.flatten_dict(config.to_dict(), sep=".")


def _checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, checkpointing.CHECKPOINTS)
  if not os.path.isdir(directory):
    return []
  return [int(n) for n in os.listdir(directory) if n.isdigit()]


def prepare(config, workdir: str) -> None:
  """Checks that `workdir` is writable and, if it holds a run, that `config` may resume it;
  then (process 0) writes config.json."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file; pass a directory path with --workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")  # hosts may share it
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir") from None
  saved = os.path.join(workdir, CONFIG_FILE)
  ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINTS)
  has_checkpoints = os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)
  if os.path.exists(saved) and has_checkpoints:
    with open(saved) as f:
      old = json.load(f)
    new = json.loads(json.dumps(flat_config(config)))
    # A key added to the schema after the run was written (absent from its config.json) is
    # unchanged when it has the default that reproduces the old behaviour: such runs resume,
    # and config.json is rewritten with it below.
    defaults = json.loads(json.dumps(flat_config(base_config())))
    old.update({k: defaults[k] for k in set(new) - set(old) if k in defaults})
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
      k = changed[0]
      raise UserError(f"workdir {workdir} holds a run with a different config "
                      f"({k}: {old.get(k)!r} there, {new.get(k)!r} now); use a new --workdir "
                      "or the same config to resume")
  # A result labelled total_steps must not come from a later step.
  steps = _checkpoint_steps(workdir) if has_checkpoints else []
  if steps and max(steps) > config.total_steps:
    raise ConfigError("total_steps", f"{config.total_steps}, but the checkpoints in {workdir} "
                      f"reach step {max(steps)}; use total_steps >= {max(steps)} or a new --workdir")
  if jax.process_index() == 0:
    with open(saved + ".tmp", "w") as f:
      json.dump(flat_config(config), f, indent=1, sort_keys=True, default=str)
    os.replace(saved + ".tmp", saved)
