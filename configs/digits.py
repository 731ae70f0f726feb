"""The embedded offline default: printed digits (fonts) -> scikit-learn handwritten digits.

  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/merlin/digits

Source: `printed_digits` (digits rendered from font faces, 28x28). Target: a small
class-balanced labelled subset of `sklearn_digits` (8x8 handwriting resized to 28x28);
test: the builder's held-out test split. Both datasets are built on first use from
pip-installed packages; nothing is downloaded. Runs in a few minutes on 2 CPU cores.
Hyperparameters marked "ours" are not from the paper (which does not give them).
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 600
  c.data.source.name = "printed_digits"
  c.data.target.name = "sklearn_digits"
  c.data.target.num_train = 200     # ours: 20 labels per class
  c.data.target.num_val = 100       # ours: model-selection split, disjoint from train and test
  c.split.train_size = 100          # ours
  c.split.val_size = 100            # ours
  c.inner.steps = 20                # ours
  c.inner.step_size = "normalized"  # ours: eta / L_hat; the paper's fixed eta=0.1 diverged here
  c.inner.lr = 1.0                  # ours: relative to 1 / L_hat (stable below 2)
  c.rho = 1.0                       # ours
  c.eval.every = 100
  if arg.local:                     # tiny smoke run
    common.local(c)
  return c
