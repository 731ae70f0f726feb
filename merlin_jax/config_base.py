"""The public config interface every experiment shares. Each `configs/*.py` starts from
`base_config()` and overrides what differs (recipes shared by several files: configs/common.py);
keys not declared are rejected when the config is loaded (the config is locked), so a
typo in `--config.foo=...` fails loudly. Every key is declared once, in merlin_jax/keys.py
(a method's hyperparameters: in its methods/<name>.py).

`load_config('configs/x.py:arg')` loads a config file the way --config does;
`override(config, {'inner.steps': 5})` sets dotted keys the way --config.inner.steps=5 does.
`python -m merlin_jax.config_base --keys` prints the key table of docs/architecture.md,
`--methods` the registered methods.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, Mapping

import ml_collections

from merlin_jax import errors, keys


def base_config() -> ml_collections.ConfigDict:
  """Every key of merlin_jax/keys.py at its default, plus every registered method's
  hyperparameters (`HParam`: e.g. rho, split.train_size for MeRLin; alpha, beta for L2-SP)."""
  c = ml_collections.ConfigDict()
  for key in keys.KEYS:
    _set(c, key.name, key.default)
  _add_method_hyperparameters(c)
  return c


def _set(c: ml_collections.ConfigDict, dotted: str, value) -> None:
  *sections, leaf = dotted.split(".")
  node = c
  for section in sections:
    if section not in node:
      node[section] = ml_collections.ConfigDict()
    node = node[section]
  node[leaf] = value


def _add_method_hyperparameters(c: ml_collections.ConfigDict) -> None:
  """Every registered method's hyperparameters as config keys, with their defaults."""
  from merlin_jax import methods  # importing it registers every method of the package
  for hp in methods.declared().values():
    _set(c, hp.key, hp.default)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/file.py[:arg]` (what --config takes) -> that file's `get_config(arg)`.

  `spec` may also name a shipped config ('digits:local': merlin_jax/config_names.py). A
  shipped file is imported as the module `merlin_jax.configs.<name>`; any other file is
  loaded from its location. The config is returned unlocked, as the file made it.
  """
  from merlin_jax import config_names
  path, _, arg = config_names.resolve(spec).partition(":")
  if not os.path.isfile(path):
    raise errors.UserError(f"config file {path} not found ({config_names.missing_hint()})")
  directory, name = os.path.split(os.path.realpath(path))
  module_name = os.path.splitext(name)[0]
  if directory == config_names.configs_dir() and module_name.isidentifier():
    module = importlib.import_module(f"merlin_jax.configs.{module_name}")
  else:  # a config outside configs/: a fresh module of its own
    spec_ = importlib.util.spec_from_file_location(f"_config_{module_name}", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def get_key(config, key: str):
  """config['inner.steps'] -> config.inner.steps; an unknown key is a ConfigError."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise errors.ConfigError(key, "no such key (the keys are those of "
                               "merlin_jax/keys.py)")
    node = node[part]
  return node


def override(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys in place, e.g. override(c, {"inner.steps": 5, "rho": 3}); returns c.

  Every key must exist. A scalar value is cast to the type of the key's current value
  (3 -> 3.0 for rho, 5.0 -> 5 for inner.steps, 0 -> False for a bool), so grid values
  parsed from a command line fit the key whatever their spelling.
  """
  flat = {}
  for key, value in overrides.items():
    old = get_key(config, key)
    if isinstance(old, bool):
      value = bool(value)
    elif isinstance(old, (int, float, str)):
      value = type(old)(value)
    flat[key] = value
  config.update_from_flattened_dict(flat)
  return config


def key_table() -> str:
  """The key table of docs/architecture.md: every declared key (merlin_jax/keys.py), then
  every method's hyperparameters."""
  from merlin_jax import methods   # importing it registers every method
  rows = ["| key | default | must be | resume may change | help |",
          "| --- | --- | --- | --- | --- |"]
  for k in keys.KEYS:
    rows.append(f"| `{k.name}` | `{k.default!r}` | {k.must_be()} | "
                f"{'yes' if k.resume else ''} | {k.help} |")
  for hp in sorted(methods.declared().values(), key=lambda h: h.key):
    owners = ", ".join(m for m in sorted(methods.METHODS)
                       if any(h.key == hp.key for h in methods.get_method(m).hyperparameters))
    rows.append(f"| `{hp.key}` | `{hp.default!r}` | (checked by its methods) | | "
                f"{hp.help} ({owners}) |")
  return "\n".join(rows)


def method_list() -> str:
  """The registered methods, as the docs list them."""
  from merlin_jax import methods
  return ", ".join(sorted(methods.METHODS))


if __name__ == "__main__":   # python -m merlin_jax.config_base --keys | --methods
  print(method_list() if sys.argv[1:] == ["--methods"] else key_table())
