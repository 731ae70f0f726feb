"""The training program: `train_and_evaluate(config, workdir)`.

One jitted outer step over a device mesh (batches sharded on 'data', parameters
replicated or FSDP), orbax checkpoints with auto-resume, periodic target-validation
evaluation for model selection (merlin_jax/evaluate.py), final target-test evaluation of
the selected model, metrics to WORKDIR/metrics.jsonl and TensorBoard. Nothing here names
a method or a model: methods declare what they need (merlin_jax/methods/base.py), backbones
read their own pre-trained weights (merlin_jax/models), two-stage starts come from
merlin_jax/two_stage.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from merlin_jax import checks, two_stage
from merlin_jax.runtime import checkpointing, sharding, workdir as workdir_lib
from merlin_jax import export as export_lib
from merlin_jax.runtime import fs, preemption, provenance
from merlin_jax.errors import ConfigError, NonFiniteLossError, Preempted, UserError
from merlin_jax.evaluate import Evaluator
from merlin_jax.methods import Context, Method
from merlin_jax.runtime.metrics import JSONL, MetricWriter, read_jsonl
from merlin_jax.models import init_head, make_backbone
from merlin_jax.optim import lr_at, make_optimizer

MAX_IN_FLIGHT = 2   # steps the host may dispatch ahead of the device (see the train loop)


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: outer steps done
  params: Any                     # {'backbone', 'source_head', 'target_head'}
  model_state: Any                # backbone collections (batch_stats) or {}
  opt_state: Any
  best_val_accuracy: jax.Array    # float32: model selection on target validation
  best_step: jax.Array            # int32


# ---------------------------------------------------------------------------------------
# State and the jitted step.


def init_params(ctx: Context, key, example_input):
  """{'backbone', 'source_head', 'target_head'} and the backbone's state, from one row of
  model input (`data.example_input`: pixels [1, H, W, C] or a pytree of token arrays)."""
  k_bb, k_src, k_tgt = jax.random.split(key, 3)
  backbone, model_state = ctx.backbone.init(k_bb, example_input)
  d = ctx.backbone.feature_dim
  params = {"backbone": backbone,
            "source_head": init_head(k_src, d, ctx.hp.num_source_classes, "random"),
            "target_head": init_head(k_tgt, d, ctx.hp.num_target_classes, "random")}
  return params, model_state


def make_train_step(method: Method, ctx: Context, optimizer, base_key, *, mesh=None,
                    state_sharding=None):
  """state, batch, target pool, anchor -> new state, metrics (one outer step, Alg. 1 l. 3-9).

  With `mesh` and `state_sharding` (sharding.state_shardings) the step is jitted with
  explicit shardings: state as placed (replicated or FSDP), source batch on 'data', target
  pool and anchor as given, metrics replicated. The donated state comes back with the same
  sharding, so its buffers are reused step after step and checkpoints restore into it.
  """

  def train_step(state: TrainState, source, target, anchor):
    key = jax.random.fold_in(base_key, state.step)   # per-step key: resumable by step
    batch = {"source": source, "target": target}

    def loss_fn(params):
      return method.objective(ctx, params, state.model_state, batch, key, anchor)

    (loss, (new_model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    new_state = state.replace(step=state.step + 1, params=new_params,
                              model_state=new_model_state, opt_state=new_opt_state)
    return new_state, metrics

  if mesh is None or state_sharding is None:
    return jax.jit(train_step, donate_argnums=(0,))
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(state_sharding, sharding.data_sharding(mesh), None, None),
                 out_shardings=(state_sharding, sharding.replicated(mesh)))


# ---------------------------------------------------------------------------------------
# The program.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.method` and returns the final metrics (also the last line of metrics.jsonl).

  SIGTERM (preemption) during the run: a checkpoint of the current step is saved and
  `errors.Preempted` raised; running it again resumes (merlin_jax/preemption.py).
  """
  with preemption.handle_signals():
    method = checks.validate_config(config)
    created = workdir_lib.make_dir(workdir)
    try:
      with workdir_lib.lock(workdir):   # one run per workdir, for the whole run
        return _train_and_evaluate(config, workdir, method)
    except UserError:
      if created and jax.process_index() == 0:
        fs.remove_dir_if_empty(workdir)   # a failed start leaves no trace
      raise


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, method: Method) -> dict:
  from merlin_jax.data import pipeline  # TensorFlow is imported here, not at module import

  # Nothing in the workdir is written until every start-up check has passed (commit below).
  workdir_lib.check(config, workdir)
  mesh = sharding.mesh_from_config(config.mesh)
  if method.uses_source:
    sharding.check_divisible(config.batch_size, mesh, "batch_size")
  data = checks.load_data(pipeline, config, method)
  hp = method.hyper(config, data.num_source_classes, data.num_target_classes)
  checks.check_data_fits(method, hp, data)
  ctx = Context(backbone=make_backbone(config.model, data.example_input), hp=hp)

  root_key = jax.random.key(config.seed)
  params, model_state = init_params(ctx, jax.random.fold_in(root_key, 1), data.example_input)
  if method.needs_pretrained:
    params["backbone"], model_state, heads = two_stage.load_start(
        config, workdir, ctx.backbone, params, model_state, method.pretrained_heads)
    params.update(heads)
  anchor = method.anchor(ctx, params, model_state, data.target_train)
  # The anchor is part of the objective: its digest goes into every checkpoint, and a
  # resume must rebuild the same one (pretrained.path may move, not change content).
  anchor_digest = None if anchor is None else checkpointing.tree_digest(anchor)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=optimizer.init(params),
                     best_val_accuracy=jnp.full((), -1.0, jnp.float32),
                     best_step=jnp.zeros((), jnp.int32))
  # Parameters + optimizer state: replicated or FSDP (config.mesh.param_sharding).
  state_sharding = sharding.state_shardings(mesh, state, config.mesh.param_sharding,
                                            config.mesh.fsdp_min_size)
  state = sharding.place(state, state_sharding)
  if anchor is not None:   # w0 shards like the backbone; any other anchor is replicated
    backbone_like = jax.tree.structure(anchor) == jax.tree.structure(params["backbone"])
    anchor = (sharding.place(anchor, state_sharding.params["backbone"]) if backbone_like
              else sharding.replicate(mesh, anchor))
  logging.info("mesh %s, params %s: train state %.1f MB per device", dict(mesh.shape),
               config.mesh.param_sharding, sharding.bytes_per_device(state) / 2**20)
  target_pool = sharding.replicate(mesh, data.target_train)

  ckpt = checkpointing.make_manager(os.path.join(workdir, checkpointing.CHECKPOINTS),
                                    config.keep_checkpoints)
  # The model selected at the best_step of any kept checkpoint must stay restorable (after a
  # kill, newer bests than the resumed state's are recomputed): keep every best saved since
  # the oldest kept checkpoint, at most one per eval, plus the one before.
  best_mngr = checkpointing.make_manager(
      os.path.join(workdir, checkpointing.BEST),
      config.keep_checkpoints * -(-config.checkpoint_every // config.eval.every) + 2)
  selected = {"params": state.params, "model_state": state.model_state}
  resumed_step, state = checkpointing.restore_latest(ckpt, state)
  start_step = int(state.step)
  saved_meta = {}
  if resumed_step is not None:
    saved_meta = checkpointing.step_metadata(os.fspath(ckpt.directory), resumed_step)
    if anchor_digest and saved_meta.get("anchor_digest") not in (None, anchor_digest):
      raise ConfigError("pretrained.path", f"the weights at {config.pretrained.path!r} differ "
                        f"from those the run in {workdir} started from (its {method.name} "
                        "anchor); point it at the same weights, or use a new --workdir")
    _, selected = checkpointing.restore_latest(best_mngr, selected, step=int(state.best_step))

  train_step = make_train_step(method, ctx, optimizer, jax.random.fold_in(root_key, 2),
                               mesh=mesh, state_sharding=state_sharding)
  evaluator = Evaluator(config, method, ctx, mesh, data, target_pool, config.seed)
  if resumed_step is not None and method.uses_source and hasattr(data.source, "check_resume"):
    # A tfrecord-streamed source resumes exactly only on the process count that wrote it.
    data.source.check_resume(saved_meta.get("process_count"))
  source_iter = (data.source.batches(start_step, config.batch_size)
                 if method.uses_source else None)
  # Every check passed: from here on the workdir is this run's.
  workdir_lib.commit(config, workdir)
  if resumed_step is not None:
    logging.info("Resumed from %s at step %d", ckpt.directory, start_step)
    if "records" in saved_meta:   # metrics.jsonl as it was at that checkpoint
      workdir_lib.restore_metrics(workdir, saved_meta["records"], resumed_step)
  provenance.record(workdir, config, start_step=start_step)
  # A start without a checkpoint keeps no record (a kill before the first one left some).
  writer = MetricWriter(workdir, resume_step=-1 if resumed_step is None else start_step)
  identity = workdir_lib.json_config(config)

  def save(step, state):
    checkpointing.save(ckpt, step, state, metadata={
        "config": identity, "records": writer.records, "anchor_digest": anchor_digest,
        "loss_window": loss_window, "process_count": jax.process_count()})

  def evaluate_and_select(state):
    nonlocal selected
    m = evaluator.target_val(state.params, state.model_state)
    m.update(evaluator.source_sets(state.params, state.model_state))
    # Compare in float32, the stored precision: an equal accuracy later is not "better".
    if np.float32(m["target_val_accuracy"]) > np.float32(state.best_val_accuracy):
      # Copies: the train step donates the state's buffers.
      selected = _copy({"params": state.params, "model_state": state.model_state})
      state = state.replace(
          best_val_accuracy=sharding.replicate(mesh, np.float32(m["target_val_accuracy"])),
          best_step=_copy(state.step))
      checkpointing.save(best_mngr, int(state.step), selected)
    m["best_target_val_accuracy"] = float(state.best_val_accuracy)
    return state, m

  if start_step == 0 and int(state.best_step) == 0 and float(state.best_val_accuracy) < 0:
    state, m = evaluate_and_select(state)  # step 0: the initial model is a candidate too
    writer.write(0, m, group="eval")

  logging.info("%s: %d devices, %d process(es); steps %d -> %d", method.name, mesh.size,
               jax.process_count(), start_step, config.total_steps)
  t_start = time.time()
  # The logged loss is the mean over the logging window; its sum travels in each
  # checkpoint's metadata (save above), so a resumed run logs what an uninterrupted one does.
  loss_window = list(saved_meta.get("loss_window", (0.0, 0)))
  clock = _TrainClock(config.total_steps)
  # No per-step host round trip: a step's metrics stay on the device (their copy to the host
  # starts at once, asynchronously) and are read at the next sync point (logging, evaluation,
  # checkpoint, preemption, the first and last steps), so the host fetches the next batch
  # while the device computes. `drain` checks them step by step in order: a non-finite step
  # stops the run before anything after it is saved. The host runs at most MAX_IN_FLIGHT
  # steps ahead of the device (it waits for step t-2's metrics before dispatching more), so
  # a stop lands within about two steps, not at the end of a window the host has already
  # queued (a preemption's grace period is ~30 s).
  pending = []   # [(step, metrics on device)] since the last sync point

  def drain():
    last = None
    for at, m in pending:
      m = jax.device_get(m)
      if not bool(m.pop("finite")):
        bad = sorted(k for k, v in m.items() if not np.all(np.isfinite(v)))
        raise NonFiniteLossError(
            f"non-finite value at step {at} in {', '.join(bad) or 'the gradient'}; stopped "
            f"without saving it (last good checkpoint: step {ckpt.latest_step()}, kept); "
            "rerun with a lower optimizer.lr or inner.lr in a new --workdir (a workdir holds "
            "one config)")
      loss_window[0] += float(m["loss"])
      loss_window[1] += 1
      last = m
    pending.clear()
    return last

  for step in range(start_step, config.total_steps):
    clock.start()
    source = sharding.shard_batch(mesh, next(source_iter)) if source_iter is not None else None
    state, metrics = train_step(state, source, target_pool, anchor)
    for leaf in jax.tree.leaves(metrics):
      if isinstance(leaf, jax.Array):
        leaf.copy_to_host_async()
    done = step + 1
    pending.append((done, metrics))
    if len(pending) > MAX_IN_FLIGHT:   # a wait on the device, no transfer: overlap is kept
      jax.block_until_ready(pending[-1 - MAX_IN_FLIGHT][1])
    logged = done % config.log_every == 0 or done == config.total_steps
    evaluated = done % config.eval.every == 0 or done == config.total_steps
    saving = done % config.checkpoint_every == 0 or done == config.total_steps
    sync = logged or evaluated or saving or step == start_step
    stop = preemption.requested(done, sync=sync)   # collective only at sync points
    if not (sync or stop):
      clock.stop(first=False)                       # dispatch time; the device time lands
      continue                                      # in the window's sync below
    metrics = drain()
    clock.stop(first=step == start_step)   # training time only: the ETA excludes eval/saves
    if logged or step == start_step:   # and the first step: a line early, console only
      lr = lr_at(config.optimizer, config.total_steps, step)
      loss = loss_window[0] / loss_window[1]
      logging.info("step %d/%d  loss %.4f (mean of %d)  lr %.3g  %s", done, config.total_steps,
                   loss, loss_window[1], lr, clock.progress(done))
    if logged:
      writer.write(done, dict(metrics, loss=loss, loss_last=metrics["loss"], lr=lr,
                              steps_per_sec=clock.steps_per_sec), group="train")
      loss_window = [0.0, 0]
    if evaluated:
      state, m = evaluate_and_select(state)
      logging.info("step %d  target val accuracy %.4f (best %.4f at step %d)", done,
                   m["target_val_accuracy"], float(state.best_val_accuracy), int(state.best_step))
      writer.write(done, m, group="eval")
    if saving:
      save(done, state)
    if stop:  # SIGTERM/SIGINT: checkpoint this step, stop (not in the handler)
      if ckpt.latest_step() != done:
        save(done, state)
      logging.warning("preempted (%s) at step %d: saved checkpoint %d in %s; rerun the "
                      "same command to resume", preemption.signal_name(), done, done,
                      ckpt.directory)
      writer.close()
      raise Preempted(done, os.fspath(ckpt.directory))

  if int(state.step) == 0 and not ckpt.all_steps():
    save(0, state)
  # Final evaluation of the model selected on target validation (or of the final model, for
  # a method whose product is the end of its training: pre-training).
  final = {"final": True, "train_seconds": time.time() - t_start}
  if method.select_on_target_val:
    sel_params, sel_state = selected["params"], selected["model_state"]
    final.update(selected_step=int(state.best_step),
                 best_target_val_accuracy=float(state.best_val_accuracy))
  else:
    sel_params, sel_state = state.params, state.model_state
    final.update(selected_step=int(state.step), best_target_val_accuracy=float(
        evaluator.target_val(sel_params, sel_state)["target_val_accuracy"]))
  head = evaluator.target_head(sel_params, sel_state)
  for name in data.eval_sets():
    if name == "target_test":
      final["target_test_accuracy"] = evaluator.eval_set(name, sel_params, sel_state, head)
  final.update(evaluator.source_sets(sel_params, sel_state))
  # The export is what was evaluated: for a 'probe' method the fitted head, not the
  # never-trained params['target_head'] (merlin_jax/export.py).
  checkpointing.export_safetensors(
      os.path.join(workdir, checkpointing.EXPORT),
      export_lib.exported_tree(sel_params, sel_state, head),
      export_lib.metadata(config, method, data.num_target_classes,
                          data.target_class_names, data.example_input, final))
  writer.write(config.total_steps, final, group="final")
  writer.close()
  ckpt.close()
  best_mngr.close()
  logging.info("%s: target test accuracy %.4f (model from step %d, target val accuracy %.4f)",
               method.name, final.get("target_test_accuracy", float("nan")),
               final["selected_step"], final["best_target_val_accuracy"])
  return final


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class _TrainClock:
  """Seconds spent in train steps only (not evaluation, checkpoints or the first step's
  compilation): the steps/s and ETA of the progress line (clu's ReportProgress counts
  everything between two reports)."""

  def __init__(self, total_steps: int):
    self.total_steps, self.seconds, self.steps = total_steps, 0.0, 0
    self._t = 0.0
    self._first = 0.0

  def start(self):
    self._t = time.perf_counter()

  def stop(self, first: bool):
    dt = time.perf_counter() - self._t
    if first:
      self._first = dt     # compilation: only used while nothing else is measured
    else:
      self.seconds, self.steps = self.seconds + dt, self.steps + 1

  @property
  def steps_per_sec(self) -> float:
    if self.steps:
      return self.steps / max(self.seconds, 1e-9)
    return 1.0 / max(self._first, 1e-9)

  def progress(self, done: int) -> str:
    rate = self.steps_per_sec
    eta = (self.total_steps - done) / max(rate, 1e-9)
    return (f"{rate:.2f} steps/s  ETA {_fmt_seconds(eta)} (training only; "
            f"{100 * done / max(self.total_steps, 1):.0f}%)")


def _fmt_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def final_metrics(workdir: str) -> dict:
  """The last line of WORKDIR/metrics.jsonl (target_test_accuracy of the selected model)."""
  return read_jsonl(os.path.join(workdir, JSONL))[-1]
