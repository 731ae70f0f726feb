"""A tiny synthetic transfer pair for fast tests of the training program.

The pair lives in the package (`merlin_jax.data.synthetic`, data name 'synthetic',
`configs/synthetic.py`); this module keeps the old names and `tiny_config`.
"""

from __future__ import annotations

from merlin_jax.data.synthetic import (  # noqa: F401  (moved into the package)
    SyntheticSource as FakeSource, SyntheticTransferData as FakeTransferData, _make,
    load_synthetic as load_fake)


def tiny_config(method="merlin", **overrides):
  """A locked-shape config for the fake pair: runs a step in well under a second."""
  from merlin_jax.config_base import base_config
  c = base_config()
  c.method = method
  c.total_steps = 10
  c.batch_size = 16
  c.data.source.name = c.data.target.name = "synthetic"
  c.data.image_size = 8
  c.data.num_source_classes = 4
  c.data.num_target_classes = 3
  c.data.target.num_train = 40
  c.data.target.num_val = 20
  c.split.train_size = 20
  c.split.val_size = 20
  c.inner.steps = 3
  c.model.conv_widths = (4, 8)
  c.model.feature_dim = 16
  c.eval.every = 5
  c.eval.batch_size = 64
  c.checkpoint_every = 5
  c.log_every = 1
  c.pretrained.steps = 4
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c
