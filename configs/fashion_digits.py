"""Fashion-MNIST -> scikit-learn digits: the offline analogue of Fashion-MNIST -> USPS.

  apt-get update && apt-get install -y dataset-fashion-mnist   # once
  python -m merlin_jax.data.prepare fashion_mnist_local         # once
  python -m merlin_jax.main --config=configs/fashion_digits.py --workdir=/tmp/merlin/fashion_digits

Source: Fashion-MNIST (`fashion_mnist_local`, 60k, 28x28x1). Target: a class-balanced
labelled subset of scikit-learn's 8x8 handwritten digits resized to 28x28 (a small
USPS-like set), test = the builder's held-out split. Hyperparameters marked "ours".
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 600               # ours
  c.data.source.name = "fashion_mnist_local"
  c.data.source.eval_split = "test"
  c.data.target.name = "sklearn_digits"
  c.data.target.num_train = 200     # ours: 20 labels per class, as configs/digits.py
  c.data.target.num_val = 100       # ours
  c.split.train_size = 100          # ours
  c.split.val_size = 100            # ours
  c.inner.steps = 20                # ours
  c.rho = 1.0                       # ours
  c.eval.every = 100
  if arg.local:
    common.local(c)
  return c
