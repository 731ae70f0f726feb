r"""A tiny synthetic transfer pair (merlin_jax/data/synthetic.py): smoke tests and CLI tests.

No TFDS data and no download: 8x8x1 images, 4 source / 3 target classes, a small CNN. A
step takes well under a second on a CPU.

  python -m merlin_jax.main --config=configs/synthetic.py --workdir=/tmp/merlin/synthetic
  python -m merlin_jax.main --config=configs/synthetic.py --workdir=/tmp/x \
      --config.method=joint --config.total_steps=50
"""

from merlin_jax.config_base import base_config


def get_config():
  c = base_config()
  c.method = "merlin"
  c.total_steps = 10
  c.batch_size = 16
  c.data.source.name = "synthetic"
  c.data.source.eval_split = ""
  c.data.target.name = "synthetic"
  c.data.image_size = 8
  c.data.channels = 1
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
  return c
