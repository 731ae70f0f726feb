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

import dataclasses
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
from merlin_jax import export as export_lib
from merlin_jax import run_report
from merlin_jax.runtime import checkpointing, fs, loop, preemption, provenance, sharding
from merlin_jax.runtime import workdir as workdir_lib
from merlin_jax.errors import ConfigError, Preempted, UserError
from merlin_jax.evaluate import Evaluator
from merlin_jax.methods import Context, Method
from merlin_jax.runtime.metrics import JSONL, MetricWriter, read_jsonl
from merlin_jax.models import init_head, make_backbone
from merlin_jax.optim import lr_at, make_optimizer


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

  # FSDP: whole weights for the compute, gradients back to shards (sharding.gathered).
  gather = None if state_sharding is None else sharding.gathered(state_sharding.params)
  if mesh is not None:   # target rows data-parallel, like the source batch (Context.rows)
    ctx = dataclasses.replace(ctx, rows=sharding.data_sharding(mesh))
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  if platform == "cpu":   # source and target in two backbone passes (Context.pass_per_part)
    ctx = dataclasses.replace(ctx, pass_per_part=True)

  def train_step(state: TrainState, source, target, anchor):
    key = jax.random.fold_in(base_key, state.step)   # per-step key: resumable by step
    batch = {"source": source, "target": target}

    def loss_fn(params):
      if gather is not None:
        params = jax.lax.with_sharding_constraint(params, gather)
      return method.objective(ctx, params, state.model_state, batch, key, anchor)

    (loss, (new_model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    if gather is not None:
      grads = jax.lax.with_sharding_constraint(grads, state_sharding.params)
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
# The program: one stage, or two (pre-training, then the method from its export).


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.method` and returns the final metrics (also the last line of metrics.jsonl).

  A two-stage method (finetune, l2sp, merlin_ft, ...) without pretrained.path runs
  `pretrain_stage` first, in WORKDIR/pretrain: a run of its own (its lock, its log line),
  then the method's run starts from its export. SIGTERM (preemption) during either stage: a
  checkpoint of the current step is saved and `errors.Preempted` raised; running it again
  resumes that stage (merlin_jax/runtime/preemption.py).
  """
  with preemption.handle_signals():
    method = checks.validate_config(config)
    if preemption.is_requested():   # a signal during start-up (main installs the handlers
      raise Preempted(None, workdir, before_start=True)   # first thing): nothing written
    start = None
    if method.needs_pretrained:
      start = config.pretrained.path or pretrain_stage(
          config, fs.join(workdir, two_stage.PRETRAIN_DIR), then=workdir)
    return _locked_run(config, workdir, method, start)


def pretrain_stage(config: ml_collections.ConfigDict, pre_workdir: str,
                   then: str | None = None) -> str:
  """Stage 1 of a two-stage method without pretrained.path: `pretrain` for
  pretrained.steps steps in pre_workdir (resumable; a finished one is read back, not
  re-run), a run of its own; returns the path of its exported weights. `then`: stage 2's
  workdir, checked (reads only) before stage 1 spends its steps."""
  if two_stage.pretrain_finished(pre_workdir):
    logging.info("stage 1/2 (pretrain): finished in %s, read back", pre_workdir)
  else:
    if then is not None:
      workdir_lib.check(config, then)
    pre = two_stage.pretrain_config(config)
    logging.info("stage 1/2 (pretrain): %d steps in %s, the start of %s", pre.total_steps,
                 pre_workdir, config.method if then is not None else "the two-stage methods")
    _locked_run(pre, pre_workdir, checks.validate_config(pre), None)
  if then is not None:   # a sweep's shared pre-training (then=None) has no one stage 2
    logging.info("stage 2/2 (%s): starts from %s", config.method, pre_workdir)
  return fs.join(pre_workdir, checkpointing.EXPORT)


def _locked_run(config, workdir: str, method: Method, pretrained: str | None) -> dict:
  created = workdir_lib.make_dir(workdir)
  try:
    with workdir_lib.lock(workdir):   # one run per workdir, for the whole run
      return _train_and_evaluate(config, workdir, method, pretrained)
  except UserError:
    if created and jax.process_index() == 0:   # a failed start leaves no trace
      for sub in (checkpointing.CHECKPOINTS, checkpointing.BEST):
        fs.remove_dir_if_empty(fs.join(workdir, sub))
      fs.remove_dir_if_empty(workdir)
    raise


def _train_and_evaluate(config, workdir: str, method: Method, pretrained: str | None) -> dict:
  """The run in the (locked) workdir. What a bitwise resume rests on is listed in
  merlin_jax/runtime/__init__.py; the rules that hold here are said where they hold."""
  from merlin_jax.data import pipeline  # TensorFlow is imported here, not at module import

  # Nothing in the workdir is written until every start-up check has passed (commit below).
  workdir_lib.check(config, workdir)
  mesh = sharding.mesh_from_config(config.mesh)
  if method.uses_source:
    sharding.check_divisible(config.batch_size, mesh, "batch_size")
  t_data = time.time()
  data = checks.load_data(pipeline, config, method)
  logging.info("%s", run_report.data_line(data, time.time() - t_data))
  hp = method.hyper(config, data.num_source_classes, data.num_target_classes)
  checks.check_data_fits(method, hp, data)
  ctx = Context(backbone=make_backbone(config.model, data.example_input), hp=hp)
  root_key = jax.random.key(config.seed)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  state, state_sharding, anchor = _initial_state(config, method, ctx, mesh, data, optimizer,
                                                 jax.random.fold_in(root_key, 1), pretrained)
  # The anchor is part of the objective: its digest goes into every checkpoint, and a
  # resume must rebuild the same one (pretrained.path may move, not change content).
  anchor_digest = None if anchor is None else checkpointing.tree_digest(anchor)
  target_pool = sharding.replicate(mesh, data.target_train)

  ckpts = loop.RunCheckpoints(workdir, config)
  resumed_step, state, selected, saved_meta = ckpts.restore(
      state, {"params": state.params, "model_state": state.model_state})
  start_step = int(state.step)
  _check_same_anchor(config, workdir, method, anchor_digest, saved_meta)
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
    logging.info("Resumed from %s at step %d", ckpts.directory, start_step)
    if "records" in saved_meta:   # metrics.jsonl as it was at that checkpoint
      workdir_lib.restore_metrics(workdir, saved_meta["records"], resumed_step)
  provenance.record(workdir, config, start_step=start_step)
  # A start without a checkpoint keeps no record (a kill before the first one left some).
  writer = MetricWriter(workdir, resume_step=-1 if resumed_step is None else start_step)
  writer.write_hparams(run_report.flat_hparams(config))   # TensorBoard's HPARAMS tab
  queue = loop.MetricsQueue(saved_meta.get("loss_window", (0.0, 0)))
  identity = workdir_lib.json_config(config)

  def save(step, state):   # what a resume reads back: the state and, with it, these
    ckpts.save(step, state, metadata={
        "config": identity, "records": writer.records, "anchor_digest": anchor_digest,
        "loss_window": queue.loss_window, "process_count": jax.process_count(),
        "best_step": int(state.best_step)})   # best/ keeps the selections of kept steps

  def evaluate_and_select(state):
    nonlocal selected
    state, selected, m = _evaluate_and_select(evaluator, ckpts, mesh, state, selected)
    return state, m

  if start_step == 0 and int(state.best_step) == 0 and float(state.best_val_accuracy) < 0:
    state, m = evaluate_and_select(state)  # step 0: the initial model is a candidate too
    writer.write(0, m, group="eval")

  logging.info("%s: %d devices, %d process(es); steps %d -> %d", method.name, mesh.size,
               jax.process_count(), start_step, config.total_steps)
  t_start = time.time()
  clock = _TrainClock(config.total_steps)
  for step in range(start_step, config.total_steps):
    clock.start()
    source = sharding.shard_batch(mesh, next(source_iter)) if source_iter is not None else None
    state, metrics = train_step(state, source, target_pool, anchor)
    done = step + 1
    queue.push(done, metrics)   # the host runs at most loop.MAX_IN_FLIGHT steps ahead
    logged = loop.itstime(done, config.log_every, config.total_steps)
    evaluated = loop.itstime(done, config.eval.every, config.total_steps)
    saving = loop.itstime(done, config.checkpoint_every, config.total_steps)
    sync = logged or evaluated or saving or step == start_step
    # A preemption is agreed on by all processes only at sync points (one collective per
    # window); the step it stops at is saved below like any checkpoint.
    preemption.check_abort()   # storage lost in the background (the lock's renewal)
    stop = preemption.requested(done, sync=sync)
    if not (sync or stop):
      clock.stop(first=False)                       # dispatch time; the device time lands
      continue                                      # in the window's sync below
    # Order at a sync point: drain (a non-finite step raises before anything of its window
    # is logged or saved), log, evaluate (may select), save (with the loss window after
    # the log reset it), stop. A resumed run replays from the saved step the same way.
    metrics = queue.drain(ckpts.latest_step())
    clock.stop(first=step == start_step)   # training time only: the ETA excludes eval/saves
    if logged or step == start_step:   # and the first step: a line early, console only
      lr = lr_at(config.optimizer, config.total_steps, step)
      logging.info("step %d/%d  loss %.4f (mean of %d)  lr %.3g  %s", done, config.total_steps,
                   queue.mean_loss(), queue.loss_window[1], lr, clock.progress(done))
    if logged:
      writer.write(done, dict(metrics, loss=queue.mean_loss(), loss_last=metrics["loss"],
                              lr=lr, steps_per_sec=clock.steps_per_sec), group="train")
      queue.reset_window()
    if evaluated:
      state, m = evaluate_and_select(state)
      logging.info("step %d  target val accuracy %.4f (best %.4f at step %d)", done,
                   m["target_val_accuracy"], float(state.best_val_accuracy), int(state.best_step))
      writer.write(done, m, group="eval")
    if saving or (stop and ckpts.latest_step() != done):
      save(done, state)
    if stop:  # SIGTERM/SIGINT: checkpoint this step (above), stop (not in the handler)
      logging.warning("preempted (%s) at step %d: saved checkpoint %d in %s; rerun the "
                      "same command to resume", preemption.signal_name(), done, done,
                      ckpts.directory)
      writer.close()
      raise Preempted(done, ckpts.directory)

  if int(state.step) == 0 and ckpts.latest_step() is None:
    save(0, state)
  final = _final_evaluation(config, method, evaluator, data, state, selected, workdir,
                            {"final": True, "train_seconds": time.time() - t_start})
  writer.write(config.total_steps, final, group="final")
  writer.close()
  ckpts.close(selected_step=int(state.best_step))
  figure = run_report.plot_learning_curve_safely(workdir, writer.records, config)
  for line in run_report.final_lines(workdir, method.name, final, figure):
    logging.info("%s", line)
  return final


def _check_same_anchor(config, workdir: str, method: Method, anchor_digest, saved_meta) -> None:
  """A resume must rebuild the anchor its checkpoints were trained against (its digest is in
  each one): pretrained.path may move, not change content."""
  if anchor_digest and saved_meta.get("anchor_digest") not in (None, anchor_digest):
    raise ConfigError("pretrained.path", f"the weights at {config.pretrained.path!r} differ "
                      f"from those the run in {workdir} started from (its {method.name} "
                      "anchor); point it at the same weights, or use a new --workdir")


def _evaluate_and_select(evaluator, ckpts, mesh, state, selected):
  """Target-validation (and source) metrics of `state`; a new best becomes the selected
  model (saved in WORKDIR/best) and is recorded in the state. (state, selected, metrics)"""
  m = evaluator.target_val(state.params, state.model_state)
  m.update(evaluator.source_sets(state.params, state.model_state))
  # Compare in float32, the stored precision: an equal accuracy later is not "better".
  if np.float32(m["target_val_accuracy"]) > np.float32(state.best_val_accuracy):
    # Copies: the train step donates the state's buffers.
    selected = _copy({"params": state.params, "model_state": state.model_state})
    state = state.replace(
        best_val_accuracy=sharding.replicate(mesh, np.float32(m["target_val_accuracy"])),
        best_step=_copy(state.step))
    ckpts.save_best(int(state.step), selected)
  m["best_target_val_accuracy"] = float(state.best_val_accuracy)
  return state, selected, m


def _initial_state(config, method: Method, ctx: Context, mesh, data, optimizer, key,
                   pretrained: str | None):
  """(the step-0 TrainState placed on the mesh, its sharding, the method's anchor placed)."""
  params, model_state = init_params(ctx, key, data.example_input)
  if method.needs_pretrained:
    params["backbone"], model_state, heads = two_stage.load_start(
        pretrained, ctx.backbone, params, model_state, method.pretrained_heads)
    params.update(heads)
  anchor = method.anchor(ctx, params, model_state, data.target_train)
  if method.check_start is not None:
    warning = method.check_start(ctx, params, model_state, data.target_train)
    if warning:
      logging.warning("%s: %s", method.name, warning)
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
  return state, state_sharding, anchor


def _final_evaluation(config, method: Method, evaluator, data, state, selected,
                      workdir: str, final: dict) -> dict:
  """The final record: the model selected on target validation (or the final model, for a
  method whose product is the end of its training: pre-training) on the target test set,
  and its export (what was evaluated: for a 'probe' method the fitted head, not the
  never-trained params['target_head'], merlin_jax/export.py)."""
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
  checkpointing.export_safetensors(
      os.path.join(workdir, checkpointing.EXPORT),
      export_lib.exported_tree(sel_params, sel_state, head),
      export_lib.metadata(config, method, data.num_target_classes,
                          data.target_class_names, data.example_input, final))
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
    if not self.steps:   # only the first step (compilation) timed: no rate, no ETA yet
      return run_report.first_step_note(self._first)
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
