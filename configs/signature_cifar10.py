"""Paper's semi-synthetic experiment: CIFAR-10 with a class 'signature' in the source.

  python -m merlin_jax.main --config=configs/signature_cifar10.py --workdir=/tmp/merlin/sig_cifar

Data, prepared once: `python -m merlin_jax.data.prepare cifar10 --data_dir=DIR`, then
--config.data.data_dir=DIR.

Source and target are disjoint subsets of CIFAR-10's train split: the target D_t is 500 clean
training images (class-balanced, seeded) and the source is the rest of the split
(`data.source.exclude_target`) with the signature: the lower half of every source image is
replaced by iid N(c/10, 0.2^2) noise for class c, a perfect source shortcut that the clean
target lacks. The paper's source has 49,500 images; we also hold out 100 clean training
images as target_val for model selection, so ours has 49,400. Test: the full clean test split
('target_test'); 'source_test' / 'source_test_clean' report source accuracy with and without
the signature. Hyperparameters marked "ours" are not given by the paper. `:local` is a tiny
smoke run.
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 10_000            # ours
  c.data.image_size = 32
  c.data.channels = 3
  c.data.source.name = "cifar10"
  c.data.source.split = "train"
  c.data.source.eval_split = "test"
  c.data.source.augment = "none"    # ours: shifts would move the signature's boundary
  c.data.source.in_memory = True    # 50k x 32x32x3 float32 = 600 MB
  c.data.source.exclude_target = True   # source = train minus D_t and target_val
  c.data.source.signature.enabled = True
  c.data.source.signature.strength = 1.0   # paper: mean c/10
  c.data.source.signature.std = 0.2        # paper
  c.data.target.name = "cifar10"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 500     # paper: 500 target images
  c.data.target.num_val = 100       # ours: model selection only
  c.data.num_source_classes = 10
  c.data.num_target_classes = 10
  c.model.name = "resnet18"         # ours
  c.model.small_inputs = True       # 32x32 inputs: 3x3 stem, no max-pool
  c.model.batch_norm = True
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
    c.model.name = "small_cnn"
  return c
