"""Every method, one module each. `get_method(name)`; add a method by adding a module
that defines `METHOD = Method(...)` (it is discovered automatically)."""

from __future__ import annotations

import importlib
import pkgutil

from merlin_jax.errors import ConfigError
from merlin_jax.methods.base import Context, Hyper, Method  # noqa: F401

_NOT_METHODS = {"base", "meta"}


def _discover() -> dict[str, Method]:
  found = {}
  for info in pkgutil.iter_modules(__path__):
    if info.name in _NOT_METHODS:
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    method = getattr(module, "METHOD", None)
    if isinstance(method, Method):
      found[method.name] = method
  return found


METHODS: dict[str, Method] = _discover()


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ConfigError("method", f"unknown method {name!r}; choose one of {sorted(METHODS)}")
  return METHODS[name]
