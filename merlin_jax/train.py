"""The training program: `train_and_evaluate(config, workdir)`.

One jitted outer step over a device mesh (batches sharded on 'data', parameters
replicated), orbax checkpoints with auto-resume, periodic target-validation evaluation
for model selection, final target-test evaluation of the selected model, metrics to
WORKDIR/metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import copy
import dataclasses
import json
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

from merlin_jax import checkpointing, inner as inner_lib, losses, sharding
from merlin_jax import preemption, provenance
from merlin_jax.errors import ConfigError, NonFiniteLossError, Preempted, UserError
from merlin_jax.methods import Context, Hyper, Method, get_method
from merlin_jax.metrics import MetricWriter, read_jsonl, JSONL
from merlin_jax.models import apply_head, init_head, make_backbone

# Keys that may change when resuming a workdir (they do not change what is computed).
RESUMABLE_CHANGES = ("mesh.data", "mesh.model", "mesh.param_sharding", "mesh.fsdp_min_size",
                     "total_steps", "eval.every", "log_every", "checkpoint_every",
                     "keep_checkpoints", "pretrained.path")


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: outer steps done
  params: Any                     # {'backbone', 'source_head', 'target_head'}
  model_state: Any                # backbone collections (batch_stats) or {}
  opt_state: Any
  best_val_accuracy: jax.Array    # float32: model selection on target validation
  best_step: jax.Array            # int32


# ---------------------------------------------------------------------------------------
# Config checks: one clear line naming the key.


def validate_config(config) -> Method:
  method = get_method(config.method)
  if not isinstance(config.total_steps, int) or config.total_steps < 0:
    raise ConfigError("total_steps", f"must be an integer >= 0, got {config.total_steps!r}")
  if config.rho < 0:
    raise ConfigError("rho", f"must be >= 0, got {config.rho}")
  if method.name == "joint" and not 0.0 <= config.alpha <= 1.0:
    raise ConfigError("alpha", f"joint training needs 0 <= alpha <= 1, got {config.alpha}")
  if config.alpha < 0:
    raise ConfigError("alpha", f"must be >= 0, got {config.alpha}")
  if config.beta < 0:
    raise ConfigError("beta", f"must be >= 0, got {config.beta}")
  if config.batch_size <= 0:
    raise ConfigError("batch_size", f"must be > 0, got {config.batch_size}")
  for key in ("split.train_size", "split.val_size"):
    section, name = key.split(".")
    if config[section][name] <= 0:
      raise ConfigError(key, f"must be > 0, got {config[section][name]}")
  if config.target_batch_size < 0:
    raise ConfigError("target_batch_size", f"must be >= 0, got {config.target_batch_size}")
  for key in ("eval.every", "checkpoint_every", "log_every"):
    section, _, name = key.rpartition(".")
    value = config[section][name] if section else config[name]
    if value <= 0:
      raise ConfigError(key, f"must be > 0, got {value}")
  if config.optimizer.lr <= 0:
    raise ConfigError("optimizer.lr", f"must be > 0, got {config.optimizer.lr}")
  inner_lib.InnerConfig.from_config(config.inner)  # raises ConfigError naming inner.*
  if method.needs_pretrained and not config.pretrained.path and config.pretrained.steps <= 0:
    raise ConfigError("pretrained.path", f"{method.name} starts from pre-trained weights: set "
                      "pretrained.path, or pretrained.steps > 0 to pre-train in the workdir first")
  return method


def make_hyper(config, data) -> Hyper:
  return Hyper(
      num_source_classes=data.num_source_classes,
      num_target_classes=data.num_target_classes,
      rho=float(config.rho), alpha=float(config.alpha), beta=float(config.beta),
      inner=inner_lib.InnerConfig.from_config(config.inner),
      split_train_size=int(config.split.train_size), split_val_size=int(config.split.val_size),
      target_batch_size=int(config.target_batch_size),
      label_smoothing=float(config.label_smoothing))


def check_data_fits(config, method: Method, data) -> None:
  n = int(data.target_train["label"].shape[0])
  if n == 0:
    raise ConfigError("data.target.num_train", "the target training set is empty")
  if method.name in ("merlin", "merlin_ft") and config.split.train_size + config.split.val_size > n:
    raise ConfigError("split", f"train_size + val_size = {config.split.train_size + config.split.val_size}"
                      f" exceeds the {n} target training examples; lower split.train_size/val_size")
  if config.target_batch_size > n:
    raise ConfigError("target_batch_size", f"{config.target_batch_size} exceeds the {n} target "
                      "training examples")
  for name, part in (("target_train", data.target_train), ("target_val", data.target_val)):
    labels = np.asarray(part["label"])
    if labels.size and (labels.min() < 0 or labels.max() >= data.num_target_classes):
      raise ConfigError("data.num_target_classes", f"{name} has labels in [{labels.min()}, "
                        f"{labels.max()}] but the head has {data.num_target_classes} classes")


# ---------------------------------------------------------------------------------------
# Optimiser and state.


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  if opt_cfg.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, opt_cfg.lr, opt_cfg.warmup_steps,
                                            max(total_steps, opt_cfg.warmup_steps + 1))
  elif opt_cfg.schedule == "constant":
    lr = (optax.linear_schedule(0.0, opt_cfg.lr, opt_cfg.warmup_steps) if opt_cfg.warmup_steps
          else opt_cfg.lr)
  else:
    raise ConfigError("optimizer.schedule", f"unknown schedule {opt_cfg.schedule!r}; use constant or cosine")
  name = opt_cfg.name
  if name == "adam":
    opt = optax.adam(lr)
  elif name == "adamw":
    opt = optax.adamw(lr, weight_decay=opt_cfg.weight_decay)
  elif name == "sgd":
    opt = optax.sgd(lr)
  elif name == "momentum":
    opt = optax.sgd(lr, momentum=opt_cfg.momentum, nesterov=True)
  else:
    raise ConfigError("optimizer.name", f"unknown optimizer {name!r}; use adam, adamw, sgd or momentum")
  chain = []
  if opt_cfg.grad_clip:
    chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  if opt_cfg.weight_decay and name != "adamw":
    chain.append(optax.add_decayed_weights(opt_cfg.weight_decay))
  chain.append(opt)
  return optax.chain(*chain)


def init_params(ctx: Context, key, image_shape, example_input=None):
  """example_input: a one-row model input (text: token arrays); else float32 zeros."""
  k_bb, k_src, k_tgt = jax.random.split(key, 3)
  if example_input is None:
    example_input = jnp.zeros((1, *image_shape), jnp.float32)
  backbone, model_state = ctx.backbone.init(k_bb, example_input)
  d = ctx.backbone.feature_dim
  params = {"backbone": backbone,
            "source_head": init_head(k_src, d, ctx.hp.num_source_classes, "random"),
            "target_head": init_head(k_tgt, d, ctx.hp.num_target_classes, "random")}
  return params, model_state


# ---------------------------------------------------------------------------------------
# The jitted steps.


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


class Evaluator:
  """Target accuracy of a model, with the method's protocol.

  'learned': the method's own target head on eval-mode features.
  'probe'  : a head fitted on frozen target-train features by the inner solver
             (`eval.probe_steps`/`probe_lr` override n/eta), then applied to the eval set.
  Source accuracy (when the model has a trained source head) uses the source head.
  """

  def __init__(self, config, method: Method, ctx: Context, mesh, data, target_pool, seed):
    self.method, self.ctx, self.mesh, self.data = method, ctx, mesh, data
    self.target_pool = target_pool
    n_dev = mesh.shape[sharding.DATA]
    self.batch_size = -(-config.eval.batch_size // n_dev) * n_dev
    probe = ctx.hp.inner
    overrides = {}
    if config.eval.probe_steps:
      overrides["steps"] = int(config.eval.probe_steps)
    if config.eval.probe_lr:
      overrides["lr"] = float(config.eval.probe_lr)
    self.probe_inner = dataclasses.replace(probe, first_order=True, **overrides)
    self.probe_key = jax.random.fold_in(jax.random.key(seed), 0x5EED)
    backbone = ctx.backbone

    @jax.jit
    def features(params, model_state, x):
      return backbone.features(params["backbone"], model_state, x, train=False)[0]

    @jax.jit
    def fit_probe(params, model_state, pool):
      f = backbone.features(params["backbone"], model_state, pool["image"], train=False)[0]
      return inner_lib.fit_head(self.probe_inner, f, pool["label"],
                                ctx.hp.num_target_classes, self.probe_key)

    @jax.jit
    def batch_stats(head, params, model_state, batch):
      logits = apply_head(head, features(params, model_state, batch["image"]))
      w = batch["mask"]
      loss = losses.softmax_cross_entropy(logits, batch["label"], weights=w)
      correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * w)
      return loss * jnp.sum(w), correct, jnp.sum(w)

    self._fit_probe = fit_probe
    self._batch_stats = batch_stats

  def target_head(self, params, model_state):
    if self.method.eval_head == "learned":
      return params["target_head"]
    return self._fit_probe(params, model_state, self.target_pool)

  def _accumulate(self, head, params, model_state, batches):
    total_loss = total_correct = total = 0.0
    for b in batches:
      b = sharding.shard_batch(self.mesh, b)
      loss, correct, count = self._batch_stats(head, params, model_state, b)
      total_loss += float(loss)
      total_correct += float(correct)
      total += float(count)
    return total_loss / max(total, 1.0), total_correct / max(total, 1.0)

  def _array_batches(self, arrays):
    n = arrays["label"].shape[0]
    for start in range(0, n, self.batch_size):
      lab = arrays["label"][start:start + self.batch_size]
      pad = self.batch_size - lab.shape[0]
      pad_rows = lambda a: np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
      # Every process holds the whole set; each feeds the rows of its own devices.
      yield sharding.process_rows(
          {"image": jax.tree.map(lambda a: pad_rows(a[start:start + self.batch_size]),
                                 arrays["image"]),   # pixels, or a pytree (text tokens)
           "label": np.pad(lab, (0, pad)),
           "mask": np.pad(np.ones(lab.shape[0], np.float32), (0, pad))})

  def target_val(self, params, model_state) -> dict:
    head = self.target_head(params, model_state)
    loss, acc = self._accumulate(head, params, model_state,
                                 self._array_batches(self.data.target_val))
    return {"target_val_loss": loss, "target_val_accuracy": acc}

  def eval_set(self, name: str, params, model_state, head=None) -> float:
    if head is None:
      head = self.target_head(params, model_state)
    _, acc = self._accumulate(head, params, model_state,
                              self.data.eval_batches(name, self.batch_size))
    return acc

  def source_sets(self, params, model_state) -> dict:
    if not self.method.uses_source:
      return {}
    out = {}
    for name in self.data.eval_sets():
      if name.startswith("source"):
        out[f"{name}_accuracy"] = self.eval_set(name, params, model_state,
                                                head=params["source_head"])
    return out


# ---------------------------------------------------------------------------------------
# Two-stage methods: where the pre-trained backbone comes from.


def pretrained_backbone(config, workdir: str, params_template, state_template):
  """Returns (backbone params, model_state) from config.pretrained.path, or from a
  `pretrain` run of config.pretrained.steps steps in WORKDIR/pretrain (resumable too)."""
  if config.pretrained.path:
    path = config.pretrained.path
    if config.model.name == "bert":  # the 'all-MiniLM-L6-v2' alias -> the pip package's dir
      from merlin_jax.models import weights
      path = weights.resolve_pretrained_path(path)
    path = checkpointing.resolve_pretrained(path)
  else:
    pre_cfg = copy.deepcopy(config)
    with pre_cfg.unlocked():
      pre_cfg.method = "pretrain"
      pre_cfg.total_steps = int(config.pretrained.steps)
      pre_cfg.pretrained.path = ""
    pre_dir = os.path.join(workdir, "pretrain")
    logging.info("%s starts from pre-trained weights: running `pretrain` for %d steps in %s",
                 config.method, pre_cfg.total_steps, pre_dir)
    train_and_evaluate(pre_cfg, pre_dir)
    path = os.path.join(pre_dir, checkpointing.EXPORT)
  flat = checkpointing.load_safetensors(path)
  if config.model.name == "bert":  # a Hugging Face BERT dir/file is the pre-trained weights
    from merlin_jax.models import weights
    flat = weights.as_export_layout(flat)
  backbone = checkpointing.fill_from_flat(params_template["backbone"], flat, "params/backbone", path)
  model_state = (checkpointing.fill_from_flat(state_template, flat, "model_state", path)
                 if state_template else {})
  return backbone, model_state


# ---------------------------------------------------------------------------------------
# Workdir bookkeeping.


def _flat_config(config) -> dict:
  return flax.traverse_util.flatten_dict(config.to_dict(), sep=".")


def prepare_workdir(config, workdir: str) -> None:
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
  saved = os.path.join(workdir, "config.json")
  has_checkpoints = os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINTS)) and os.listdir(
      os.path.join(workdir, checkpointing.CHECKPOINTS))
  if os.path.exists(saved) and has_checkpoints:
    with open(saved) as f:
      old = json.load(f)
    new = json.loads(json.dumps(_flat_config(config)))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
      k = changed[0]
      raise UserError(f"workdir {workdir} holds a run with a different config "
                      f"({k}: {old.get(k)!r} there, {new.get(k)!r} now); use a new --workdir "
                      "or the same config to resume")
  if has_checkpoints:  # a result labelled total_steps must not come from a later step
    steps = [int(n) for n in os.listdir(os.path.join(workdir, checkpointing.CHECKPOINTS))
             if n.isdigit()]
    if steps and max(steps) > config.total_steps:
      raise ConfigError("total_steps", f"{config.total_steps}, but the checkpoints in {workdir} "
                        f"reach step {max(steps)}; use total_steps >= {max(steps)} or a new --workdir")
  if jax.process_index() == 0:
    with open(saved + ".tmp", "w") as f:
      json.dump(_flat_config(config), f, indent=1, sort_keys=True, default=str)
    os.replace(saved + ".tmp", saved)


# ---------------------------------------------------------------------------------------
# The program.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.method` and returns the final metrics (also the last line of metrics.jsonl).

  SIGTERM (preemption) during the run: a checkpoint of the current step is saved and
  `errors.Preempted` raised; running it again resumes (merlin_jax/preemption.py).
  """
  with preemption.handle_signals():
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from merlin_jax.data import pipeline  # TensorFlow is imported here, not at module import

  method = validate_config(config)
  prepare_workdir(config, workdir)
  mesh = sharding.mesh_from_config(config.mesh)
  if method.uses_source:
    sharding.check_divisible(config.batch_size, mesh, "batch_size")
  data = pipeline.load_transfer_data(
      config.data, config.seed, need_source=method.uses_source,
      process_index=jax.process_index(), process_count=jax.process_count())
  check_data_fits(config, method, data)
  hp = make_hyper(config, data)
  example_input = getattr(data, "example_input", None)   # text data: one row of tokens
  backbone = make_backbone(config.model, (1, *data.image_shape) if example_input is None
                           else example_input)
  ctx = Context(backbone=backbone, hp=hp)

  root_key = jax.random.key(config.seed)
  params, model_state = init_params(ctx, jax.random.fold_in(root_key, 1), data.image_shape,
                                    example_input)
  anchor = None
  if method.needs_pretrained:
    params["backbone"], model_state = pretrained_backbone(config, workdir, params, model_state)
    anchor = params["backbone"] if method.name == "l2sp" else None
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=optimizer.init(params),
                     best_val_accuracy=jnp.full((), -1.0, jnp.float32),
                     best_step=jnp.zeros((), jnp.int32))
  # Parameters + optimizer state: replicated or FSDP (config.mesh.param_sharding).
  state_sharding = sharding.state_shardings(mesh, state, config.mesh.param_sharding,
                                            config.mesh.fsdp_min_size)
  state = sharding.place(state, state_sharding)
  anchor = None if anchor is None else sharding.place(anchor, state_sharding.params["backbone"])
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
  if resumed_step is not None:
    logging.info("Resumed from %s at step %d", ckpt.directory, start_step)
    _, selected = checkpointing.restore_latest(best_mngr, selected, step=int(state.best_step))
  provenance.record(workdir, config, start_step=start_step)

  writer = MetricWriter(workdir, resume_step=start_step)
  train_step = make_train_step(method, ctx, optimizer, jax.random.fold_in(root_key, 2),
                               mesh=mesh, state_sharding=state_sharding)
  evaluator = Evaluator(config, method, ctx, mesh, data, target_pool, config.seed)
  source_iter = (data.source.batches(start_step, config.batch_size)
                 if method.uses_source else None)

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
    writer.write(0, m)

  logging.info("%s: %d devices, %d process(es); steps %d -> %d", method.name, mesh.size,
               jax.process_count(), start_step, config.total_steps)
  t_last, step_last = time.time(), start_step
  t_start = time.time()
  for step in range(start_step, config.total_steps):
    source = sharding.shard_batch(mesh, next(source_iter)) if source_iter is not None else None
    state, metrics = train_step(state, source, target_pool, anchor)
    metrics = jax.device_get(metrics)
    done = step + 1
    if not bool(metrics.pop("finite")):
      bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
      raise NonFiniteLossError(
          f"non-finite value at step {done} in {', '.join(bad) or 'the gradient'}; stopped "
          f"without saving it (last good checkpoint: step {ckpt.latest_step()}); lower "
          "optimizer.lr or inner.lr")
    if done % config.log_every == 0 or done == config.total_steps:
      now = time.time()
      steps_per_sec = (done - step_last) / max(now - t_last, 1e-9)
      t_last, step_last = now, done
      eta = (config.total_steps - done) / max(steps_per_sec, 1e-9)
      logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %s", done, config.total_steps,
                   metrics["loss"], steps_per_sec, _fmt_seconds(eta))
      writer.write(done, dict(metrics, steps_per_sec=steps_per_sec))
    if done % config.eval.every == 0 or done == config.total_steps:
      state, m = evaluate_and_select(state)
      logging.info("step %d  target val accuracy %.4f (best %.4f at step %d)", done,
                   m["target_val_accuracy"], float(state.best_val_accuracy), int(state.best_step))
      writer.write(done, m)
    if done % config.checkpoint_every == 0 or done == config.total_steps:
      checkpointing.save(ckpt, done, state)
    if preemption.requested():  # SIGTERM: checkpoint this step, stop (never in the handler)
      if ckpt.latest_step() != done:
        checkpointing.save(ckpt, done, state)
      logging.warning("preempted (SIGTERM) at step %d: saved checkpoint %d in %s; rerun the "
                      "same command to resume", done, done, ckpt.directory)
      writer.close()
      raise Preempted(done, os.fspath(ckpt.directory))

  if int(state.step) == 0 and not ckpt.all_steps():
    checkpointing.save(ckpt, 0, state)
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
  checkpointing.export_safetensors(os.path.join(workdir, checkpointing.EXPORT),
                                   {"params": sel_params, "model_state": sel_state})
  writer.write(config.total_steps, final)
  writer.close()
  ckpt.close()
  best_mngr.close()
  logging.info("%s: target test accuracy %.4f (model from step %d, target val accuracy %.4f)",
               method.name, final.get("target_test_accuracy", float("nan")),
               final["selected_step"], final["best_target_val_accuracy"])
  return final


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _fmt_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def final_metrics(workdir: str) -> dict:
  """The last line of WORKDIR/metrics.jsonl (target_test_accuracy of the selected model)."""
  return read_jsonl(os.path.join(workdir, JSONL))[-1]
