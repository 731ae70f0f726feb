"""Config and data checks before a run starts: one clear line naming the key.

The checks every run shares live here; each method checks its own hyperparameters
(`HParam.check`) and their fit to the data (`Method.check_data`).
"""

from __future__ import annotations

import numpy as np

from merlin_jax import inner as inner_lib
from merlin_jax.errors import ConfigError
from merlin_jax.methods import Method, get_method


def validate_config(config) -> Method:
  """Returns the config's method after checking every key the run reads."""
  method = get_method(config.method)
  if not isinstance(config.total_steps, int) or config.total_steps < 0:
    raise ConfigError("total_steps", f"must be an integer >= 0, got {config.total_steps!r}")
  method.hyper_values(config)   # raises ConfigError naming the method's key
  if config.batch_size <= 0:
    raise ConfigError("batch_size", f"must be > 0, got {config.batch_size}")
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
