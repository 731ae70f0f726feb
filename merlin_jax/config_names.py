"""`--config=` by name or by path: the shipped configs are the package `merlin_jax.configs`.

  --config=digits                 # a shipped config, from any directory after `pip install`
  --config=digits:local           # with its argument
  --config=configs/food_cub.py    # a path, as before (in the repository: the same files)
  --config=~/my_pair.py:arg       # the user's own file

In the repository the files live in configs/ (merlin_jax/configs is a symlink to it); the
installed package holds them as merlin_jax/configs/ and installs no top-level `configs`
module (a user's own `configs` package would clash with it). A config file imports the
shared recipes as `from merlin_jax.configs import common`.
"""

from __future__ import annotations

import os

CONFIG_FLAGS = ("--config=", "-config=")


def configs_dir() -> str:
  """The directory of the shipped config files (the installed or the checkout's)."""
  from merlin_jax import configs
  return os.path.realpath(list(configs.__path__)[0])


def shipped() -> list[str]:
  """The names of the shipped configs ('digits', 'food_cub', ...)."""
  return sorted(f[:-3] for f in os.listdir(configs_dir())
                if f.endswith(".py") and not f.startswith("_") and f != "common.py")


def resolve(spec: str) -> str:
  """'digits[:arg]' -> '/.../merlin_jax/configs/digits.py[:arg]'; a path stays as it is.

  A spec names a shipped config when its file part has no '/' and no '.py' and is not an
  existing file; an unknown name is left alone (the loader then reports it missing).
  """
  path, sep, arg = spec.partition(":")
  if "/" in path or path.endswith(".py") or os.path.exists(path) or not path.isidentifier():
    return spec
  candidate = os.path.join(configs_dir(), f"{path}.py")
  return candidate + sep + arg if os.path.isfile(candidate) else spec


def resolve_argv(argv: list[str]) -> list[str]:
  """argv with a `--config=NAME[:arg]` flag turned into the shipped file's path."""
  out = []
  for a in argv:
    for prefix in CONFIG_FLAGS:
      if a.startswith(prefix):
        a = prefix + resolve(a[len(prefix):])
        break
    out.append(a)
  return out


def missing_hint() -> str:
  """What --config accepts, for a 'not found' error."""
  return (f"give a shipped config by name ({', '.join(shipped())}), or a config file's "
          "path, each optionally with :ARG")
