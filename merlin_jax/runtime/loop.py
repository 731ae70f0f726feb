"""The train loop's plumbing (train.py's `_train_and_evaluate` is the loop itself).

- `itstime`: the one cadence rule (log, evaluate, checkpoint).
- `MetricsQueue`: per-step metrics stay on the device until a sync point; `drain` checks
  them in step order and sums the logged loss window.
- `RunCheckpoints`: the run's two checkpoint managers (the train state; the selected model)
  and what a resume reads back from them.

The rules here are part of the resume promise (runtime/__init__.py lists them all): the
loss window travels in each checkpoint's metadata, and `drain` runs before anything of its
window is logged or saved.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from merlin_jax.errors import NonFiniteLossError
from merlin_jax.runtime import checkpointing

# Steps the host may dispatch ahead of the device. A stop (a non-finite loss, a preemption)
# lands within about this many steps, not at the end of a window the host has already
# queued (a preemption's grace period is ~30 s); 2 keeps the host fetching the next batch
# while the device computes.
MAX_IN_FLIGHT = 2


def itstime(step: int, every: int, total_steps: int) -> bool:
  """Whether a cadence of `every` steps falls on `step` (steps done, 1-based); the last
  step is on every cadence (big_vision's `u.itstime`)."""
  return step % every == 0 or step == total_steps


class MetricsQueue:
  """[(step, metrics on the device)] since the last sync point, and the logged loss window.

  No per-step host round trip: `push` starts each step's copy to the host at once,
  asynchronously, and waits (on the device, no transfer) only for the step MAX_IN_FLIGHT
  back; `drain` reads them at a sync point. A non-finite step raises in `drain`, before
  anything after it is logged or saved. The loss window ([sum, count] since the last logged
  line) is saved in each checkpoint's metadata, so a resumed run logs the mean an
  uninterrupted one does.
  """

  def __init__(self, loss_window=(0.0, 0)):
    self.pending = []
    self.loss_window = list(loss_window)

  def push(self, step: int, metrics) -> None:
    for leaf in jax.tree.leaves(metrics):
      if isinstance(leaf, jax.Array):
        leaf.copy_to_host_async()
    self.pending.append((step, metrics))
    if len(self.pending) > MAX_IN_FLIGHT:
      jax.block_until_ready(self.pending[-1 - MAX_IN_FLIGHT][1])

  def drain(self, last_checkpoint: int | None) -> dict | None:
    """The last step's metrics (host numbers) after checking every pending step in order."""
    last = None
    for at, m in self.pending:
      m = jax.device_get(m)
      if not bool(m.pop("finite")):
        bad = sorted(k for k, v in m.items() if not np.all(np.isfinite(v)))
        raise NonFiniteLossError(
            f"non-finite value at step {at} in {', '.join(bad) or 'the gradient'}; stopped "
            f"without saving it ({_kept(last_checkpoint)}); "
            "rerun with a lower optimizer.lr or inner.lr in a new --workdir (a workdir holds "
            "one config)")
      self.loss_window[0] += float(m["loss"])
      self.loss_window[1] += 1
      last = m
    self.pending.clear()
    return last

  def mean_loss(self) -> float:
    return self.loss_window[0] / self.loss_window[1]

  def reset_window(self) -> None:
    self.loss_window = [0.0, 0]


def _kept(step) -> str:
  if step is None:
    return "no checkpoint was saved yet: nothing to resume"
  return f"last good checkpoint: step {step}, kept"


class RunCheckpoints:
  """WORKDIR/checkpoints (the train state, every checkpoint_every steps and at a stop) and
  WORKDIR/best (the selected model, saved at each new best on target validation)."""

  def __init__(self, workdir: str, config):
    self.state = checkpointing.make_manager(os.path.join(workdir, checkpointing.CHECKPOINTS),
                                            config.keep_checkpoints)
    # The model selected at the best_step of any kept checkpoint must stay restorable
    # (after a kill, newer bests than the resumed state's are recomputed): keep every best
    # saved since the oldest kept checkpoint, at most one per eval, plus the one before.
    self.best = checkpointing.make_manager(
        os.path.join(workdir, checkpointing.BEST),
        config.keep_checkpoints * -(-config.checkpoint_every // config.eval.every) + 2)

  @property
  def directory(self) -> str:
    return os.fspath(self.state.directory)

  def restore(self, state, selected):
    """(resumed step or None, state, selected model, the checkpoint's metadata)."""
    resumed_step, state = checkpointing.restore_latest(self.state, state)
    if resumed_step is None:
      return None, state, selected, {}
    meta = checkpointing.step_metadata(self.directory, resumed_step)
    _, selected = checkpointing.restore_latest(self.best, selected, step=int(state.best_step))
    return resumed_step, state, selected, meta

  def save(self, step: int, state, metadata: dict) -> None:
    checkpointing.save(self.state, step, state, metadata=metadata)

  def save_best(self, step: int, selected) -> None:
    checkpointing.save(self.best, step, selected)

  def latest_step(self):
    return self.state.latest_step()

  def close(self, selected_step: int | None = None) -> None:
    """At the end of a run (`selected_step` given), best/ keeps what a user needs: the
    selected model (the step the export came from) and the selections of the kept
    checkpoints (a resume from one of them restores its own), not every improvement."""
    if selected_step is not None:
      needed = {selected_step} | {
          checkpointing.step_metadata(self.directory, s).get("best_step", -1)
          for s in self.state.all_steps()}
      if -1 not in needed:   # a checkpoint that does not say (an older version): keep all
        checkpointing.keep_only(self.best, needed)
    self.state.close()
    self.best.close()
