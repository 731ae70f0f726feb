"""The paper's signature experiment on Fashion-MNIST, fully offline.

  apt-get update && apt-get install -y dataset-fashion-mnist     # once
  python -m merlin_jax.data.prepare fashion_mnist_local           # once
  python -m merlin_jax.main --config=configs/signature_fashion.py --workdir=/tmp/merlin/sig_fashion

Source and target are disjoint subsets of Fashion-MNIST's 60k train split: D_t = 500 clean
training images (class-balanced, seeded), target_val = 100 more (ours, model selection),
the source = the other 59,400 with the signature (lower half of each image replaced by iid
N(c/10, 0.2^2) noise for class c). Test: the clean 10k test split ('target_test'), and source
accuracy with / without the signature ('source_test' / 'source_test_clean'). Small CNN on
28x28x1: runs on CPU. Hyperparameters marked "ours" are not given by the paper. `:local` is
a tiny smoke run.
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 3000              # ours
  c.data.image_size = 28
  c.data.channels = 1
  c.data.source.name = "fashion_mnist_local"
  c.data.source.split = "train"
  c.data.source.eval_split = "test"
  c.data.source.augment = "none"    # ours: shifts would move the signature's boundary
  c.data.source.in_memory = True
  c.data.source.exclude_target = True
  c.data.source.signature.enabled = True
  c.data.source.signature.strength = 1.0   # paper: mean c/10
  c.data.source.signature.std = 0.2        # paper
  c.data.target.name = "fashion_mnist_local"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 500     # paper: 500 target images
  c.data.target.num_val = 100       # ours
  c.data.num_source_classes = 10
  c.data.num_target_classes = 10
  c.model.name = "small_cnn"        # ours
  c.batch_size = 128                # ours
  c.optimizer.lr = 1e-3             # ours
  c.split.train_size = 250          # ours
  c.split.val_size = 250            # ours
  c.inner.steps = 20                # ours
  c.inner.lr = 1.0                  # ours: eta relative to 1/L_hat (inner.step_size="normalized")
  c.rho = 1.0                       # ours
  c.eval.every = 500
  if arg.local:
    common.local(c)
  return c
