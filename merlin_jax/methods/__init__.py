"""Every method, one module each. `get_method(name)`; add a method by adding a module
that defines `METHOD = Method(...)` (it is discovered automatically), or register one from
your own code with `register_method(Method(...))`."""

from __future__ import annotations

import importlib
import pkgutil

from merlin_jax.errors import ConfigError
from merlin_jax.methods.base import (  # noqa: F401  (the public names)
    Context, HParam, Hyper, Method, declare, declared)

_NOT_METHODS = {"base", "meta"}
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
  """Makes `method` available as `config.method = method.name` (its hyperparameters become
  config keys of base_config and attributes of Hyper)."""
  declare(method.hyperparameters)
  METHODS[method.name] = method
  return method


def _discover() -> None:
  for info in pkgutil.iter_modules(__path__):
    if info.name in _NOT_METHODS:
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    method = getattr(module, "METHOD", None)
    if isinstance(method, Method):
      register_method(method)


_discover()


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ConfigError("method", f"unknown method {name!r}; choose one of {sorted(METHODS)}")
  return METHODS[name]
