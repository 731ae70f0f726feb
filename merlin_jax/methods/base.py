"""The method contract: the objective signature, what a method declares, the shared pieces.

A method is one module in this package that registers `METHOD = Method(...)`:

    objective(ctx, params, state, batch, key, anchor) -> (loss, (new_state, metrics))

params : {'backbone': ..., 'source_head': {'w','b'}, 'target_head': {'w','b'}}
state  : the backbone's non-trainable collections (e.g. {'batch_stats': ...}; may be {})
batch  : {'source': {'inputs', 'label'} or None,
          'target': {'inputs', 'label'}}   # the whole labelled target-train pool, on device
         'inputs' is the model input: pixels [N, H, W, C], or any pytree of arrays with a
         leading batch axis (e.g. a dict of token arrays for a text backbone).
key    : per-step PRNG key (split resampling, head init, target minibatch)
anchor : what the method keeps of its pre-trained start when it sets `uses_anchor`: the
         pre-trained backbone params w0 (L2-SP, DELTA), or whatever its `make_anchor`
         computes once from the start (Co-Tuning: a class relationship); else None

and what the training program needs to know without naming the method: does it read the
source, does it start from pre-trained weights (and keep them as an anchor), which head is
evaluated, its hyperparameters (`HParam`: config key, default, check; read in objectives
as `ctx.hp.<name>`) and any check of the data against them (`check_data`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from merlin_jax import losses
from merlin_jax.errors import ConfigError
from merlin_jax.inner import InnerConfig
from merlin_jax.models import Backbone, apply_head, pixels_to_float


@dataclasses.dataclass(frozen=True)
class HParam:
  """A method hyperparameter: config key (top level or 'section.name'), default, check.

  `check(value)` returns None when the value is valid, else the error text (the training
  program raises ConfigError naming the key). Several methods may declare the same key
  (e.g. 'alpha') with the same default and their own checks.
  """
  key: str
  default: Any
  help: str = ""
  check: Callable[[Any], str | None] | None = None

  @property
  def name(self) -> str:
    """The attribute on Hyper: 'split.train_size' -> 'split_train_size'."""
    return self.key.replace(".", "_")


def _finite(v) -> bool:   # nan/inf pass `v >= low` or break the loss: never valid
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and abs(v) != float("inf") and v == v)


def at_least(low):
  """An HParam check: a finite value >= low."""
  return lambda v: (f"must be a finite number, got {v}" if not _finite(v)
                    else None if v >= low else f"must be >= {low}, got {v}")


def above(low):
  """An HParam check: a finite value > low."""
  return lambda v: (f"must be a finite number, got {v}" if not _finite(v)
                    else None if v > low else f"must be > {low}, got {v}")


# Every hyperparameter a registered method declared: name -> HParam (methods/__init__.py).
_DECLARED: dict[str, HParam] = {}


def declare(hparams) -> None:
  """Makes `hparams` known to Hyper and base_config (called when a method is registered)."""
  for hp in hparams:
    old = _DECLARED.get(hp.name)
    if old is not None and (old.key, old.default) != (hp.key, hp.default):
      raise ValueError(f"hyperparameter {hp.key!r} is declared twice with different defaults "
                       f"({old.default!r}, {hp.default!r})")
    _DECLARED.setdefault(hp.name, hp)


def declared() -> dict[str, HParam]:
  """name -> HParam of every registered method's hyperparameters."""
  return dict(_DECLARED)


class Hyper:
  """The hyperparameters objectives read, as attributes: frozen and hashable (static
  under jit, where the training step closes over it).

  Common to every method: num_source_classes, num_target_classes, label_smoothing and
  inner (the inner solver, also the 'probe' evaluation's). Any other name is a method
  hyperparameter: given here, or the default its declaring method gave (`HParam`).
  """

  __slots__ = ("_items",)

  def __init__(self, *, num_source_classes: int, num_target_classes: int,
               label_smoothing: float = 0.0, inner: InnerConfig = InnerConfig(), **method_values):
    for name in method_values:
      if name not in _DECLARED:
        raise TypeError(f"Hyper: {name!r} is not a hyperparameter of any registered method")
    items = dict(num_source_classes=num_source_classes, num_target_classes=num_target_classes,
                 label_smoothing=label_smoothing, inner=inner, **method_values)
    object.__setattr__(self, "_items", tuple(sorted(items.items())))

  def __getattr__(self, name):
    for k, v in object.__getattribute__(self, "_items"):
      if k == name:
        return v
    if name in _DECLARED:
      return _DECLARED[name].default
    raise AttributeError(f"Hyper has no {name!r}; declare it as an HParam of the method")

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

  def replace(self, **changes) -> "Hyper":
    return Hyper(**{**dict(self._items), **changes})

  def __hash__(self):
    return hash(self._items)

  def __eq__(self, other):
    return isinstance(other, Hyper) and self._items == other._items

  def __repr__(self):
    return "Hyper(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"


@dataclasses.dataclass(frozen=True)
class Context:
  backbone: Backbone
  hp: Hyper
  # Where rows taken from the (replicated) target pool go: `train.make_train_step` sets the
  # mesh's 'data' sharding, so the target minibatch / MeRLin's split is computed data-
  # parallel like the source batch instead of whole on every device. None: no constraint.
  rows: Any = None
  # Run the backbone once per part (source, then target) instead of once over their
  # concatenation, when it keeps no batch statistics (`backbone_features`): the same
  # features, faster on XLA:CPU. `train.make_train_step` sets it for a CPU mesh.
  pass_per_part: bool = False


Objective = Callable[..., tuple[jax.Array, tuple[Any, dict]]]


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  objective: Objective
  uses_source: bool            # reads batch['source']
  needs_pretrained: bool       # starts from pre-trained backbone weights (two-stage)
  eval_head: str               # 'learned': params['target_head']; 'probe': fit a head on
                               # frozen target-train features with the inner solver
  description: str = ""
  # True: the model reported (and exported) is the one selected on target validation.
  # False: the final model (pre-training: phi_pre is what source training ends with; choosing
  # it on the target would make the first stage target-aware).
  select_on_target_val: bool = True
  hyperparameters: tuple[HParam, ...] = ()
  uses_anchor: bool = False    # the objective gets the pre-trained backbone as `anchor`
  # check_data(hp, num_target_train): raises ConfigError when the data cannot serve the
  # hyperparameters (e.g. a split larger than the target set).
  check_data: Callable[[Hyper, int], None] | None = None
  # Heads that also start from the pre-trained export (Co-Tuning: its source head).
  pretrained_heads: tuple[str, ...] = ()
  # make_anchor(ctx, params, model_state, target_pool) -> the anchor, computed once from the
  # pre-trained start (default: its backbone params).
  make_anchor: Callable[..., Any] | None = None
  # check_start(ctx, params, model_state, target_pool) -> None, or one line the log warns
  # with: the objective will not do what its name says from this start (BSS: a zero penalty).
  check_start: Callable[..., str | None] | None = None

  def __post_init__(self):
    if self.eval_head not in ("learned", "probe"):
      raise ValueError(f"eval_head must be 'learned' or 'probe', got {self.eval_head!r}")
    if self.uses_anchor and not self.needs_pretrained:
      raise ValueError(f"{self.name}: an anchor is the pre-trained start: set needs_pretrained")

  def anchor(self, ctx, params, model_state, target_pool):
    """The objective's `anchor`, from the (pre-trained) start; None without uses_anchor."""
    if not self.uses_anchor:
      return None
    if self.make_anchor is None:
      return params["backbone"]
    return self.make_anchor(ctx, params, model_state, target_pool)

  def hyper_values(self, config) -> dict:
    """{name: value} of this method's hyperparameters in `config`, each checked."""
    values = {}
    for hp in self.hyperparameters:
      node = config
      for part in hp.key.split("."):
        node = node[part]
      message = hp.check(node) if hp.check else None
      if message:
        raise ConfigError(hp.key, message)
      # The declared type (a float key given as 3 is 3.0), as static values under jit.
      values[hp.name] = type(hp.default)(node) if isinstance(hp.default, (int, float)) else node
    return values

  def hyper(self, config, num_source_classes: int, num_target_classes: int) -> Hyper:
    """The Hyper of a run of this method: the common values and its hyperparameters."""
    return Hyper(num_source_classes=int(num_source_classes),
                 num_target_classes=int(num_target_classes),
                 label_smoothing=float(config.label_smoothing),
                 inner=InnerConfig.from_config(config.inner), **self.hyper_values(config))


# ---------------------------------------------------------------------------------------
# Shared pieces.


def backbone_features(ctx: Context, params, state, source_inputs, target_inputs,
                      train: bool = True):
  """One backbone pass over [source; target] (either may be None).

  Returns (source_features or None, target_features or None, new_state). One pass means
  batch-norm statistics come from the combined batch and running averages update once.

  With `ctx.pass_per_part` (set for CPU meshes) and a backbone without batch statistics
  (empty state), source and target go through the backbone in two passes instead: each
  image's features depend only on that image, so they are the same features (the weights'
  gradient sums the two parts: the same sum in another order). On XLA:CPU the BENCH.md
  MeRLin step ran ~7% faster that way and joint training ~2% (its compiled temporaries
  79 -> 53 MB and 79 -> 67 MB; WORKSPACE.md, issue 32). Accelerators keep one pass.
  """
  if (ctx.pass_per_part and source_inputs is not None and target_inputs is not None
      and not jax.tree.leaves(state)):
    f_src, _ = ctx.backbone.features(params["backbone"], state, source_inputs, train)
    f_tgt, new_state = ctx.backbone.features(params["backbone"], state, target_inputs, train)
    return f_src, f_tgt, new_state
  # uint8 pixels (a pool kept in uint8) are scaled before the concatenation would promote
  # them to floats in [0, 255].
  parts = [pixels_to_float(x) for x in (source_inputs, target_inputs) if x is not None]
  x = parts[0] if len(parts) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *parts)
  feats, new_state = ctx.backbone.features(params["backbone"], state, x, train)
  n_src = 0 if source_inputs is None else batch_size(source_inputs)
  f_src = feats[:n_src] if source_inputs is not None else None
  f_tgt = feats[n_src:] if target_inputs is not None else None
  return f_src, f_tgt, new_state


def batch_size(inputs) -> int:
  return jax.tree.leaves(inputs)[0].shape[0]


def take(tree, idx):
  """Rows `idx` of every array in `tree` (inputs may be pytrees)."""
  return jax.tree.map(lambda a: a[idx], tree)


def take_from_pool(tree, idx, rows=None):
  """`take` for the target pool held on device: one dynamic slice per row (a loop), so
  the compiler reads the rows in place. An index gather made the TPU compiler copy the
  whole pool first (a 4,994-image 224 px uint8 pool: 0.80 GiB of temporaries, 0.14 GiB
  row by row; libtpu 0.0.42.1, compile_check). `rows` (`Context.rows`): the sharding the
  taken rows are constrained to when their count divides over it; without it every device
  of a mesh computed the whole target batch (BERT-base GLUE fine-tuning at v5e:2x4: the
  same 2.19 TFLOP per device as on one chip)."""
  def take_rows(a):
    out = jax.lax.map(lambda i: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), idx)
    if rows is not None and out.shape[0] % rows.mesh.shape[rows.spec[0]] == 0:
      out = jax.lax.with_sharding_constraint(out, rows)
    return out
  return jax.tree.map(take_rows, tree)


# The target minibatch of the methods that train a target head by gradient steps.
TARGET_BATCH_SIZE = HParam("target_batch_size", 0, "target examples per step (0 = the whole "
                           "target-train pool)", at_least(0))


def check_target_batch(hp: Hyper, num_target_train: int) -> None:
  if hp.target_batch_size > num_target_train:
    raise ConfigError("target_batch_size", f"{hp.target_batch_size} exceeds the "
                      f"{num_target_train} target training examples")


def fine_tuning_method(name: str, objective: Objective, description: str,
                       hyperparameters: tuple[HParam, ...] = (),
                       uses_anchor: bool = False, **fields) -> Method:
  """A method that trains the target head and every layer from the pre-trained start on
  target minibatches (fine-tuning and its regularised variants); `fields`: other Method
  fields (pretrained_heads, make_anchor)."""
  return Method(name, objective, uses_source=False, needs_pretrained=True,
                eval_head="learned", description=description, uses_anchor=uses_anchor,
                hyperparameters=hyperparameters + (TARGET_BATCH_SIZE,),
                check_data=check_target_batch, **fields)


def sample_target_batch(ctx: Context, key, target):
  """A random subset of `ctx.hp.target_batch_size` examples of the target pool (all of it,
  permuted, if 0), placed as `ctx.rows` (`take_from_pool`)."""
  n = target["label"].shape[0]
  size = ctx.hp.target_batch_size
  size = n if size in (0, None) else size
  if size > n:
    raise ConfigError("target_batch_size", f"{size} exceeds the {n} target-train examples; lower it")
  idx = jax.random.permutation(key, n)[:size]
  return take_from_pool(target, idx, ctx.rows)


def source_loss(ctx: Context, params, f_src, y_src):
  """L_{D_s}(theta_s, phi) on a source batch; returns (loss, metrics)."""
  logits = apply_head(params["source_head"], f_src)
  loss = losses.softmax_cross_entropy(logits, y_src, ctx.hp.label_smoothing)
  return loss, {"source_loss": loss, "source_accuracy": losses.accuracy(logits, y_src)}


def target_loss(ctx: Context, params, f_tgt, y_tgt):
  """L_{D_t}(theta_t, phi) with the learned target head; returns (loss, metrics)."""
  logits = apply_head(params["target_head"], f_tgt)
  loss = losses.softmax_cross_entropy(logits, y_tgt, ctx.hp.label_smoothing)
  return loss, {"target_loss": loss, "target_accuracy": losses.accuracy(logits, y_tgt)}
