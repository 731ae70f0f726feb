"""Target (and source) accuracy of a model, with its method's protocol.

'learned': the method's own target head on eval-mode features.
'probe'  : a head fitted on frozen target-train features by the inner solver
           (`eval.probe_steps`/`probe_lr` override n/eta), then applied to the eval set.
Source accuracy (when the model has a trained source head) uses the source head.
Every set is read through `data.eval_batches(name, batch_size)` (padded, masked, this
process's rows), so each batch is split over the mesh's 'data' axis; the probe's pass over
the target pool runs in chunks of the same size inside one jit (`chunked_features`), so
neither grows with the set and both shrink with devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from merlin_jax import inner as inner_lib, losses
from merlin_jax.runtime import sharding
from merlin_jax.methods import Context, Method
from merlin_jax.methods.base import batch_size as num_rows, take
from merlin_jax.models import apply_head

PROBE_KEY_SALT = 0x5EED   # the probe head's init key: fold_in(key(seed), PROBE_KEY_SALT)


def eval_features(backbone):
  """features(params, model_state, x) -> [N, D]: the backbone in eval mode, jitted."""

  @jax.jit
  def features(params, model_state, x):
    return backbone.features(params["backbone"], model_state, x, train=False)[0]

  return features


class Evaluator:
  """Accuracy of (params, model_state) on the named sets of `data` (merlin_jax/data)."""

  def __init__(self, config, method: Method, ctx: Context, mesh, data, target_pool, seed):
    self.method, self.ctx, self.mesh, self.data = method, ctx, mesh, data
    self.target_pool = target_pool
    n_dev = mesh.shape[sharding.DATA]
    self.batch_size = -(-config.eval.batch_size // n_dev) * n_dev
    # The probe's chunk: eval.batch_size rows, or the whole pool when it is smaller.
    n_pool = num_rows(target_pool["inputs"])
    chunk = min(self.batch_size, -(-n_pool // n_dev) * n_dev)
    chunk_sharding = sharding.data_sharding(mesh)
    overrides = {}
    if config.eval.probe_steps:
      overrides["steps"] = int(config.eval.probe_steps)
    if config.eval.probe_lr:
      overrides["lr"] = float(config.eval.probe_lr)
    self.probe_inner = dataclasses.replace(ctx.hp.inner, first_order=True, **overrides)
    self.probe_key = jax.random.fold_in(jax.random.key(seed), PROBE_KEY_SALT)
    backbone = ctx.backbone
    features = eval_features(backbone)

    @jax.jit
    def fit_probe(params, model_state, pool):
      f = chunked_features(
          lambda x: backbone.features(params["backbone"], model_state, x, train=False)[0],
          pool["inputs"], chunk, chunk_sharding)
      return inner_lib.fit_head(self.probe_inner, f, pool["label"],
                                ctx.hp.num_target_classes, self.probe_key)

    @jax.jit
    def batch_stats(head, params, model_state, batch):
      logits = apply_head(head, features(params, model_state, batch["inputs"]))
      w = batch["mask"]
      loss = losses.softmax_cross_entropy(logits, batch["label"], weights=w)
      correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * w)
      return loss * jnp.sum(w), correct, jnp.sum(w)

    self._fit_probe = fit_probe
    self._batch_stats = batch_stats

  def target_head(self, params, model_state):
    """The head whose accuracy is reported: the learned one, or the fitted probe."""
    if self.method.eval_head == "learned":
      return params["target_head"]
    return self._fit_probe(params, model_state, self.target_pool)

  def _loss_and_accuracy(self, name: str, head, params, model_state):
    total_loss = total_correct = total = 0.0
    for b in self.data.eval_batches(name, self.batch_size):
      b = sharding.shard_batch(self.mesh, b)
      loss, correct, count = self._batch_stats(head, params, model_state, b)
      total_loss += float(loss)
      total_correct += float(correct)
      total += float(count)
    return total_loss / max(total, 1.0), total_correct / max(total, 1.0)

  def target_val(self, params, model_state) -> dict:
    head = self.target_head(params, model_state)
    loss, acc = self._loss_and_accuracy("target_val", head, params, model_state)
    return {"target_val_loss": loss, "target_val_accuracy": acc}

  def eval_set(self, name: str, params, model_state, head=None) -> float:
    if head is None:
      head = self.target_head(params, model_state)
    return self._loss_and_accuracy(name, head, params, model_state)[1]

  def source_sets(self, params, model_state) -> dict:
    if not self.method.uses_source:
      return {}
    return {f"{name}_accuracy": self.eval_set(name, params, model_state,
                                              head=params["source_head"])
            for name in self.data.eval_sets() if name.startswith("source")}


def chunked_features(features_fn, inputs, chunk: int, chunk_sharding):
  """features_fn over every row of `inputs` (a pytree [N, ...]), `chunk` rows at a time.

  Traced inside the caller's jit: a `lax.map` over chunks, each constrained to
  `chunk_sharding` (rows on 'data'), so the working memory is one chunk split over the
  devices whatever N. Chunks are contiguous slices of the pool (the last one starts at
  N - chunk and overlaps its predecessor; the rows seen twice are dropped): a gather by an
  index array made the TPU compiler copy the whole pool first (a 4,994-image uint8 pool:
  0.80 GiB of temporaries, against none with slices; libtpu 0.0.42.1). A chunk larger than
  the pool (a tiny pool) repeats row N - 1 to fill up. Returns features [N, D] in row order.
  """
  n = num_rows(inputs)
  n_chunks = -(-n // chunk)
  if chunk > n:   # one padded chunk
    idx = jnp.minimum(jnp.arange(chunk), n - 1)
    x = jax.lax.with_sharding_constraint(take(inputs, idx), chunk_sharding)
    return features_fn(x)[:n]

  def one(start):
    rows = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk), inputs)
    return features_fn(jax.lax.with_sharding_constraint(rows, chunk_sharding))

  starts = jnp.minimum(jnp.arange(n_chunks) * chunk, n - chunk)
  f = jax.lax.map(one, starts)                                  # [n_chunks, chunk, D]
  head = f[:-1].reshape(((n_chunks - 1) * chunk,) + f.shape[2:])
  tail = f[-1][n_chunks * chunk - n:]                           # the rows not in `head`
  return jnp.concatenate([head, tail], axis=0)
