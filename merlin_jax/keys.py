"""Every config key, declared once: its default, its range or choices, whether a resume may
change it, and one line of help.

Everything else derives from `KEYS`: `config_base.base_config()` builds the config from it,
`validate(config)` (called by checks.validate_config) checks every value against it before a
run reads one, `inner.InnerConfig` takes its defaults and checks from the `inner.*` keys,
`runtime/workdir.py` lets a resume change exactly the keys marked `resume=True`, and the key
table of docs/architecture.md is `python -m merlin_jax.config_base --keys` (a test keeps it
in step).

A method's hyperparameters (rho, alpha, ...) are declared by the method itself
(`methods/<name>.py`, `HParam`), not here; tests/test_architecture.py fails if a key is
declared twice or a use site re-checks a declared range or list of choices.

Keys whose choices are a registry (method, model.name, the datasets) are checked by their
registry (methods/, models/, data/sources.py), which names the registered choices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from merlin_jax.errors import ConfigError

_MAX_INT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. The value must be: of the default's kind (int, float, bool, str, tuple),
  >= low (> low with strict=True) and < high where given, one of `choices` where given, and
  pass `valid` where given; `what` replaces the generated text of the error ("must be ...")."""
  name: str
  default: Any
  help: str
  low: float | None = None
  high: float | None = None
  strict: bool = False
  choices: tuple | None = None
  valid: Callable[[Any], bool] | None = None
  what: str | None = None
  resume: bool = False      # a resume may change it: it does not change what is computed

  @property
  def kind(self) -> str:
    return type(self.default).__name__

  def must_be(self) -> str:
    if self.what:
      return self.what
    if self.choices is not None:
      return f"one of {', '.join(map(str, self.choices))}"
    text = {"int": "an integer", "float": "a finite number"}.get(self.kind, f"a {self.kind}")
    if self.low is not None:
      text += f" {'>' if self.strict else '>='} {self.low}"
    if self.high is not None:
      text += f"{' and' if self.low is not None else ''} < {self.high}"
    return text

  def check(self, value) -> None:
    """Raises ConfigError naming the key unless `value` is valid."""
    if not self._ok(value):
      raise ConfigError(self.name, f"must be {self.must_be()}, got {value!r}")

  def _ok(self, value) -> bool:
    if self.kind == "int":
      ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    elif self.kind == "float":
      ok = (isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            and math.isfinite(value))
    elif self.kind == "bool":
      ok = isinstance(value, (bool, np.bool_))
    elif self.kind == "tuple":
      ok = isinstance(value, (tuple, list))
    else:
      ok = isinstance(value, str)
    if ok and self.low is not None:
      ok = value > self.low if self.strict else value >= self.low
    if ok and self.high is not None:
      ok = value < self.high
    if ok and self.choices is not None:
      ok = value in self.choices
    if ok and self.valid is not None:
      ok = bool(self.valid(value))
    return ok


def _int(name, default, help, low=None, high=_MAX_INT, **kw):
  return Key(name, default, help, low=low, high=high, **kw)


def _pos(name, default, help, **kw):   # a finite number > 0
  return Key(name, float(default), help, low=0, strict=True, **kw)


def _nonneg(name, default, help, **kw):   # a finite number >= 0
  return Key(name, float(default), help, low=0, **kw)


def _widths_ok(w) -> bool:
  return bool(w) and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x < 2**16
                         for x in w)


KEYS: tuple[Key, ...] = (
    # --- What to run ------------------------------------------------------------------
    Key("method", "merlin", "the method (merlin_jax/methods/: `python -m "
        "merlin_jax.config_base --methods` lists them)"),
    _int("seed", 0, "the run's seed (data split, initialisation, per-step keys)", 0, 2**32,
         what="an integer in [0, 2**32) (jax.random.key keeps 32 bits)"),
    _int("total_steps", 1000, "outer steps (a constant schedule may be extended on resume)",
         0, resume=True),
    _nonneg("label_smoothing", 0.0, "label smoothing of the training losses", high=1),
    # --- Inner solver of the target head (merlin, merlin_ft; also the 'probe' eval) ---
    Key("inner.kind", "gd", "gd (the paper's n steps) | ridge (closed form) | implicit "
        "(argmin, implicit gradient)", choices=("gd", "ridge", "implicit")),
    _int("inner.steps", 20, "n: gd steps (implicit: L-BFGS iterations at most)", 0, 2**20),
    # 'fixed', the paper's plain eta, diverged on the digits pair once feature norms grew
    # (WORKSPACE.md), so 'normalized' (eta / L_hat) is the default.
    _pos("inner.lr", 1.0, "eta (step_size='normalized': relative to 1/L_hat, stable below 2)"),
    Key("inner.step_size", "normalized", "normalized (eta / L_hat, any feature scale) | fixed "
        "(the paper's plain eta)", choices=("normalized", "fixed")),
    Key("inner.first_order", False, "stop the gradient through the inner solve"),
    Key("inner.remat", True, "jax.checkpoint on the gd scan body"),
    Key("inner.gd_form", "auto", "gd: auto (dual when N_tr <= feature dim) | primal | dual",
        choices=("auto", "primal", "dual")),
    Key("inner.init", "zeros", "the gd head's start: zeros | random", choices=("zeros",
                                                                             "random")),
    _nonneg("inner.weight_decay", 0.0, "L2 on the head inside the inner problem"),
    _pos("inner.ridge_lambda", 1.0, "ridge: the regulariser"),
    _pos("inner.ridge_scale", 1.0, "ridge: logits = scale * the ridge prediction"),
    _pos("inner.tol", 1e-6, "implicit: gradient-norm tolerance of the solve"),
    # --- Data -------------------------------------------------------------------------
    Key("data.kind", "image", "image | text (sentence(-pair) targets: data/text.py)",
        choices=("image", "text")),
    Key("data.data_dir", "", "the TFDS data dir ('' = $TFDS_DATA_DIR or "
        "~/tensorflow_datasets)"),
    _int("data.image_size", 28, "image side in pixels", 1, 2**16),
    _int("data.channels", 1, "image channels", choices=(1, 3), what="1 or 3"),
    Key("data.source.name", "printed_digits", "the source dataset (data/sources.py)"),
    Key("data.source.split", "train", "the source's training split"),
    Key("data.source.eval_split", "test", "the source accuracy eval split ('' = none)"),
    Key("data.source.augment", "none", "none | light | inception",
        choices=("none", "light", "inception")),
    Key("data.source.in_memory", True, "small sets: index-level deterministic batching"),
    Key("data.source.exclude_target", False, "source = source.split minus D_t and target val "
        "(same dataset and split)"),
    Key("data.source.image_key", "image", "the TFDS feature holding the source image"),
    Key("data.source.label_key", "label", "the TFDS feature holding the source label"),
    Key("data.source.signature.enabled", False, "the paper's semi-synthetic source"),
    Key("data.source.signature.strength", 1.0, "mean c/10 * strength for class c"),
    _nonneg("data.source.signature.std", 0.2, "the signature's noise"),
    Key("data.target.name", "sklearn_digits", "the target dataset (data/sources.py)"),
    Key("data.target.train_split", "train", "labelled target examples are drawn from here"),
    Key("data.target.test_split", "test", "final evaluation only"),
    _int("data.target.num_train", 500, "the target training set D_t (class-balanced)", -1,
         what="-1 (text: all) or an integer >= 0"),
    _int("data.target.num_val", 100, "held out from D_t for model selection", 1,
         what="an integer >= 1 (model selection and the probe are evaluated on it)"),
    Key("data.target.image_key", "image", "the TFDS feature holding the target image"),
    Key("data.target.label_key", "label", "the TFDS feature holding the target label"),
    _int("data.num_source_classes", 10, "source classes", 1),
    _int("data.num_target_classes", 10, "target classes", 1),
    _int("data.shuffle_buffer", 10_000, "streamed source: shuffle buffer", 1),
    _int("data.prefetch", 2, "batches prefetched", 0, 2**10),
    Key("data.text.tokenizer_dir", "", "text: the weights' HF directory (vocab.txt / "
        "tokenizer.json)"),
    # [CLS] a [SEP] b [SEP]: a pair needs 4 tokens to keep one of each text.
    _int("data.text.max_length", 128, "text: tokens per example, pairs truncated "
         "longest-first", 4, 2**16),
    Key("data.text.fields", ("sentence1", "sentence2"), "text: the TFDS features, one text "
        "or a pair"),
    # --- Model ------------------------------------------------------------------------
    Key("model.name", "small_cnn", "the backbone (models/__init__.py: small_cnn, resnet18, "
        "resnet50, bert)"),
    Key("model.conv_widths", (32, 64), "small_cnn: channels per conv block",
        valid=_widths_ok, what="a non-empty tuple of integers >= 1"),
    _int("model.feature_dim", 256, "small_cnn: feature dimension", 1, 2**20),
    Key("model.batch_norm", False, "small_cnn: batch norm"),
    _int("model.conv_batch_chunk", -1, "small_cnn: convolve the batch in slices of this many "
         "images at most (-1: 64 on CPU, whole elsewhere; 0: whole; the same features, "
         "faster on XLA:CPU)", -1, 2**20, resume=True),
    Key("model.small_inputs", False, "resnet: the CIFAR stem (3x3, no max-pool)"),
    # Parameters, optimizer state, batch-norm statistics, losses and the inner solve stay
    # float32 whatever the activations' dtype.
    Key("model.dtype", "float32", "the activations' and matmuls' dtype (mixed precision)",
        choices=("float32", "bfloat16")),
    Key("model.hf_dir", "", "bert: the Hugging Face directory (config.json)"),
    _int("model.num_layers", 0, "bert: keep the first layers only (0 = all)", 0, 2**10),
    Key("model.pooling", "pooler", "bert: the feature the heads read",
        choices=("pooler", "cls", "mean")),
    Key("model.remat", False, "jax.checkpoint on every encoder / residual block"),
    # --- Optimisation -----------------------------------------------------------------
    _int("batch_size", 128, "the global source batch", 1),
    Key("optimizer.name", "adam", "the outer optimiser",
        choices=("adam", "adamw", "sgd", "momentum")),
    _pos("optimizer.lr", 1e-3, "the outer learning rate"),
    _nonneg("optimizer.momentum", 0.9, "momentum (nesterov)", high=1),
    _nonneg("optimizer.weight_decay", 0.0, "decoupled weight decay"),
    Key("optimizer.schedule", "constant", "constant | cosine (spans total_steps)",
        choices=("constant", "cosine")),
    _int("optimizer.warmup_steps", 0, "linear warm-up steps", 0),
    _nonneg("optimizer.grad_clip", 0.0, "global-norm clip (0 = off)"),
    # --- Two-stage methods (finetune, l2sp, merlin_ft, ...) ----------------------------
    # The weights may move on resume; their content is checked (the anchor digest).
    Key("pretrained.path", "", "the start: a model.safetensors, a workdir holding one, or "
        "what the backbone reads (e.g. a HF BERT directory)", resume=True),
    _int("pretrained.steps", 1000, "if no path: pre-train for this many steps in "
         "WORKDIR/pretrain first (its own stage)", 0),
    # --- Evaluation, checkpoints, logging ---------------------------------------------
    _int("eval.every", 200, "steps between target-validation evals (model selection)", 1),
    _int("eval.batch_size", 500, "evaluation batch", 1),
    _int("eval.probe_steps", 0, "'probe' eval: gd steps of the fitted head (0 = inner.steps)",
         0),
    _nonneg("eval.probe_lr", 0.0, "'probe' eval: its eta (0 = inner.lr)"),
    _int("checkpoint_every", 500, "steps between checkpoints", 1, resume=True),
    _int("keep_checkpoints", 2, "checkpoints kept", 1, resume=True,
         what="an integer >= 1 (a preempted run resumes from the kept checkpoint)"),
    _int("log_every", 50, "steps between train-metric lines", 1, resume=True),
    # --- Device layout: changes where, not what, is computed ---------------------------
    _int("mesh.data", -1, "devices on the 'data' axis (-1 = all not on 'model')", -1, 2**20,
         valid=lambda v: v != 0, what="-1 (all devices) or an integer >= 1", resume=True),
    _int("mesh.model", 1, "devices on the 'model' axis (>1: large leaves split on it)", 1,
         2**20, resume=True),
    Key("mesh.param_sharding", "replicated", "replicated | fsdp (params + optimizer state "
        "split on 'data')", choices=("replicated", "fsdp"), resume=True),
    _int("mesh.fsdp_min_size", 2**14, "leaves with fewer elements stay replicated", 0,
         resume=True),
)

BY_NAME: dict[str, Key] = {}
for _k in KEYS:
  if _k.name in BY_NAME:
    raise AssertionError(f"config key {_k.name} declared twice in merlin_jax/keys.py")
  BY_NAME[_k.name] = _k
del _k

# The keys a resume may change (runtime/workdir.py): device layout, how long to go on with a
# constant schedule, logging and checkpoint cadence, where the pre-trained start lives.
RESUMABLE = tuple(k.name for k in KEYS if k.resume)


def default(name: str):
  return BY_NAME[name].default


def check(name: str, value) -> None:
  """Raises ConfigError naming `name` unless `value` fits its declaration."""
  BY_NAME[name].check(value)


def validate(flat: dict) -> None:
  """Checks every declared key of a flat config ({'inner.steps': 20, ...})."""
  for k in KEYS:
    k.check(flat[k.name])


def section(prefix: str) -> tuple[Key, ...]:
  """The keys under `prefix.` (e.g. 'inner'), in declaration order."""
  return tuple(k for k in KEYS if k.name.startswith(prefix + "."))
