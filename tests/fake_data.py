"""A tiny synthetic transfer pair for fast tests of the training program.

The pair lives in the package (`merlin_jax.data.synthetic`, data name 'synthetic',
`configs/synthetic.py`); this module keeps the old names and `tiny_config`.
"""

from __future__ import annotations

import os

from merlin_jax.data.synthetic import (  # noqa: F401  (moved into the package)
    SyntheticSource as FakeSource, load_synthetic as load_fake)


def tiny_config(method="merlin", **overrides):
  """`configs/synthetic.py` (runs a step in well under a second) with `method` and dotted-key
  overrides, e.g. tiny_config("joint", **{"optimizer.lr": 0.1})."""
  from merlin_jax.config_base import load_config, override
  c = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "synthetic.py"))
  c.method = method
  return override(c, overrides)
