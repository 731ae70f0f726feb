"""Config and data checks before a run starts: one clear line naming the key.

The checks every run shares live here; each method checks its own hyperparameters
(`HParam.check`) and their fit to the data (`Method.check_data`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from merlin_jax import inner as inner_lib
from merlin_jax.config_base import get_key
from merlin_jax.errors import ConfigError, DataError, UserError
from merlin_jax.methods import Method, get_method

# key -> (kind, low, high, what): 'int' or 'float' (finite), low <= value (< high if given).
# The checks run before anything reads the value, so no library sees a bad one first.
_MAX_INT = 2**31 - 1
RANGES = {
    "seed": ("int", 0, 2**32, "an integer in [0, 2**32) (jax.random.key keeps 32 bits)"),
    "total_steps": ("int", 0, _MAX_INT, None),
    "batch_size": ("int", 1, _MAX_INT, None),
    "eval.every": ("int", 1, _MAX_INT, None),
    "checkpoint_every": ("int", 1, _MAX_INT, None),
    "log_every": ("int", 1, _MAX_INT, None),
    "keep_checkpoints": ("int", 1, _MAX_INT, "an integer >= 1 (a preempted run resumes from "
                         "the kept checkpoint)"),
    "eval.batch_size": ("int", 1, _MAX_INT, None),
    "eval.probe_steps": ("int", 0, _MAX_INT, None),
    "eval.probe_lr": ("float", 0, None, None),
    "optimizer.lr": ("float", 0, None, "a finite number > 0"),
    "optimizer.momentum": ("float", 0, 1, None),
    "optimizer.weight_decay": ("float", 0, None, None),
    "optimizer.warmup_steps": ("int", 0, _MAX_INT, None),
    "optimizer.grad_clip": ("float", 0, None, None),
    "label_smoothing": ("float", 0, 1, None),
    "inner.lr": ("float", 0, None, "a finite number > 0"),
    "inner.steps": ("int", 0, 2**20, None),
    "inner.tol": ("float", 0, None, "a finite number > 0"),
    "inner.weight_decay": ("float", 0, None, None),
    "inner.ridge_lambda": ("float", 0, None, "a finite number > 0"),
    "inner.ridge_scale": ("float", 0, None, "a finite number > 0"),
    "data.target.num_train": ("int", -1, _MAX_INT, "-1 (text: all) or an integer >= 0"),
    "data.target.num_val": ("int", 1, _MAX_INT, "an integer >= 1 (model selection and the "
                            "probe are evaluated on it)"),
    "data.num_source_classes": ("int", 1, _MAX_INT, None),
    "data.num_target_classes": ("int", 1, _MAX_INT, None),
    "data.image_size": ("int", 1, 2**16, None),
    "data.channels": ("int", 1, 2**10, None),
    "data.shuffle_buffer": ("int", 1, _MAX_INT, None),
    "data.prefetch": ("int", 0, 2**10, None),
    "data.text.max_length": ("int", 2, 2**16, None),
    "data.source.signature.strength": ("float", None, None, None),
    "data.source.signature.std": ("float", 0, None, None),
    "model.feature_dim": ("int", 1, 2**20, None),
    "model.num_layers": ("int", 0, 2**10, None),
    "mesh.data": ("int", -1, 2**20, "-1 (all devices) or an integer >= 1"),
    "mesh.model": ("int", 1, 2**20, None),
    "mesh.fsdp_min_size": ("int", 0, _MAX_INT, None),
    "pretrained.steps": ("int", 0, _MAX_INT, None),
}
# The strict bounds (> low, not >=).
_ABOVE = {"optimizer.lr", "inner.lr", "inner.ridge_lambda", "inner.ridge_scale", "inner.tol"}
ENUMS = {
    "optimizer.name": ("adam", "adamw", "sgd", "momentum"),
    "optimizer.schedule": ("constant", "cosine"),
    "mesh.param_sharding": ("replicated", "fsdp"),
    "data.kind": ("image", "text"),
    "data.source.augment": ("none", "light", "inception"),
    "model.pooling": ("pooler", "cls", "mean"),
}


def _check_value(key: str, value) -> None:
  kind, low, high, what = RANGES[key]
  if kind == "int":
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  else:
    ok = (isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
          and math.isfinite(value))
  if ok and low is not None:
    ok = value > low if key in _ABOVE else value >= low
  if ok and high is not None:
    ok = value < high
  if ok and key == "mesh.data":
    ok = value != 0
  if not ok:
    if what is None:
      what = ("an integer" if kind == "int" else "a finite number")
      what += "" if low is None else f" {'>' if key in _ABOVE else '>='} {low}"
      what += "" if high is None else f" and < {high}"
    raise ConfigError(key, f"must be {what}, got {value!r}")


def _flat(config, prefix="") -> dict:
  out = {}
  for k, v in config.items():
    if hasattr(v, "items"):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def validate_config(config) -> Method:
  """Returns the config's method after checking every key the run reads."""
  method = get_method(config.method)
  # Every number of every key (a method's too): finite, and an integer that fits in 32 bits
  # (what jax and numpy turn it into); the ranges below then narrow it.
  for key, value in _flat(config).items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or key in RANGES:
      continue
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(key, f"must be a finite number, got {value!r}")
    if isinstance(value, int) and not -2**31 < value < 2**31:
      raise ConfigError(key, f"must be an integer in (-2**31, 2**31), got {value!r}")
  for key in RANGES:
    _check_value(key, get_key(config, key))
  for key, choices in ENUMS.items():
    value = get_key(config, key)
    if value not in choices:
      raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")
  _check_data_dir(config.data.data_dir)
  widths = config.model.conv_widths
  if not (isinstance(widths, (tuple, list)) and widths and all(
      isinstance(w, int) and not isinstance(w, bool) and 1 <= w < 2**16 for w in widths)):
    raise ConfigError("model.conv_widths", f"must be a non-empty tuple of integers >= 1, "
                      f"got {widths!r}")
  method.hyper_values(config)   # raises ConfigError naming the method's key
  inner = inner_lib.InnerConfig.from_config(config.inner)  # raises ConfigError naming inner.*
  if method.needs_pretrained and not config.pretrained.path and config.pretrained.steps <= 0:
    raise ConfigError("pretrained.path", f"{method.name} starts from pre-trained weights: set "
                      "pretrained.path, or pretrained.steps > 0 to pre-train in the workdir first")
  _check_not_degenerate(config, method, inner)
  return method


def _check_data_dir(path: str) -> None:
  """A local data_dir must be a directory or not exist yet (datasets built on first use
  are written there), never below a regular file."""
  if not path or "://" in path:
    return
  probe = os.path.abspath(path)
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if probe and not os.path.isdir(probe):
    raise ConfigError("data.data_dir", f"{path} is not a directory ({probe} is a file); "
                      "point it at the TFDS data directory")


def _check_not_degenerate(config, method: Method, inner) -> None:
  """Settings that run and exit 0 but can only give chance-level results."""
  from merlin_jax.methods.meta import META_HPARAMS
  if inner.kind != "gd" or inner.init != "zeros":
    return
  # A zero head after 0 gradient steps predicts one class: its meta-loss has no gradient
  # in the backbone, and a probe of it is chance.
  if set(META_HPARAMS) <= set(method.hyperparameters) and inner.steps == 0:
    raise ConfigError("inner.steps", f"0 with inner.init='zeros' leaves {method.name}'s "
                      "inner head at zero (no meta-gradient); use inner.steps > 0 or "
                      "inner.init='random'")
  if method.eval_head == "probe" and (config.eval.probe_steps or inner.steps) == 0:
    raise ConfigError("eval.probe_steps", "0 (and inner.steps 0) with inner.init='zeros' "
                      "evaluates a zero head (chance level); set eval.probe_steps > 0")


def load_data(pipeline, config, method: Method):
  """pipeline.load_transfer_data(config.data, ...); a file that cannot be read (a corrupt
  TFDS record, a data_dir below a file) is a DataError naming it, not a traceback."""
  import jax
  try:
    return pipeline.load_transfer_data(
        config.data, config.seed, need_source=method.uses_source,
        process_index=jax.process_index(), process_count=jax.process_count())
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - OSError, TF's DataLossError, a protobuf error...
    if not isinstance(e, (OSError, ValueError, EOFError)) and not type(e).__module__.startswith(
        ("tensorflow", "google.protobuf", "etils", "array_record")):
      raise
    text = " ".join(str(e).split())[:300]
    raise DataError(f"cannot read the data of config.data (data_dir "
                    f"{config.data.data_dir or '$TFDS_DATA_DIR'!r}): {type(e).__name__}: "
                    f"{text}; re-prepare the dataset (python -m merlin_jax.data.prepare NAME) "
                    "or fix config.data.data_dir") from e


def check_data_fits(method: Method, hp, data) -> None:
  """The loaded data can serve the run: a non-empty target set, labels the heads can
  represent, and whatever the method checks of its hyperparameters against the data."""
  n = int(data.target_train["label"].shape[0])
  if n == 0:
    raise ConfigError("data.target.num_train", "the target training set is empty")
  if method.check_data is not None:
    method.check_data(hp, n)
  for name, part in (("target_train", data.target_train), ("target_val", data.target_val)):
    labels = np.asarray(part["label"])
    if labels.size and (labels.min() < 0 or labels.max() >= data.num_target_classes):
      raise ConfigError("data.num_target_classes", f"{name} has labels in [{labels.min()}, "
                        f"{labels.max()}] but the head has {data.num_target_classes} classes")
