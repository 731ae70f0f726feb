"""Config and data checks before a run starts: one clear line naming the key.

The checks every run shares live here (each key's own range and choices: its declaration in
merlin_jax/keys.py); each method checks its own hyperparameters
(`HParam.check`) and their fit to the data (`Method.check_data`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from merlin_jax import inner as inner_lib, keys
from merlin_jax.errors import ConfigError, DataError, UserError
from merlin_jax.methods import Method, get_method


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
  flat = _flat(config)
  # Every number of every key a method declared: finite, and an integer that fits in 32
  # bits (what jax and numpy turn it into); the method's own checks then narrow it.
  for key, value in flat.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or key in keys.BY_NAME:
      continue
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(key, f"must be a finite number, got {value!r}")
    if isinstance(value, int) and not -2**31 < value < 2**31:
      raise ConfigError(key, f"must be an integer in (-2**31, 2**31), got {value!r}")
  keys.validate(flat)   # every declared key: kind, range, choices (merlin_jax/keys.py)
  _check_data_dir(config.data.data_dir)
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
