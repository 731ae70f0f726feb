"""The public config interface every experiment shares. Each `configs/*.py` starts from
`base_config()` and overrides what differs; keys not defined here are rejected when the
config is loaded (the config is locked), so a typo in `--config.foo=...` fails loudly.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- What to run -----------------------------------------------------------------------
  c.method = "merlin"          # merlin | merlin_ft | target_only | pretrain | finetune | joint | l2sp
  c.seed = 0
  c.total_steps = 1000         # outer steps

  # --- Method hyperparameters (model selection on target validation only) ---------------
  c.rho = 1.0                  # MeRLin: L_src + rho * L_meta,t
  c.alpha = 0.5                # joint: (1-alpha) L_src + alpha L_tgt;  l2sp: alpha/2 ||w - w0||^2
  c.beta = 0.01                # l2sp: beta/2 ||theta_t||^2 on the new head
  c.label_smoothing = 0.0

  # Inner solver of the target head (merlin, merlin_ft; also the 'probe' evaluation).
  c.inner = ml_collections.ConfigDict()
  c.inner.kind = "gd"          # gd | ridge
  c.inner.steps = 20           # n
  c.inner.lr = 1.0             # eta (with step_size='normalized': relative to 1/L_hat, stable below 2)
  # 'normalized' (ours): eta / L_hat, L_hat a bound on the head loss's curvature, stable at
  # any feature scale. 'fixed': the paper's plain eta; it diverged on our digits pair once
  # feature norms grew (see WORKSPACE.md), so it is not the default.
  c.inner.step_size = "normalized"
  c.inner.first_order = False
  c.inner.remat = True         # jax.checkpoint on the scan body
  c.inner.init = "zeros"       # zeros | random
  c.inner.weight_decay = 0.0
  c.inner.ridge_lambda = 1.0
  c.inner.ridge_scale = 1.0

  # Per-step resampled split of the target-train pool (Algorithm 1, l. 5).
  c.split = ml_collections.ConfigDict()
  c.split.train_size = 100
  c.split.val_size = 100
  c.target_batch_size = 0      # non-meta methods: target examples per step (0 = whole pool)

  # --- Data ------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""         # TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.data.image_size = 28
  c.data.channels = 1
  c.data.source = ml_collections.ConfigDict()
  c.data.source.name = "printed_digits"
  c.data.source.split = "train"
  c.data.source.eval_split = "test"   # source accuracy eval ('' = none)
  c.data.source.augment = "none"      # none | light | inception
  c.data.source.in_memory = True      # small sets: index-level deterministic batching
  c.data.source.exclude_target = False  # source = source.split minus D_t and target val (same dataset+split)
  c.data.source.signature = ml_collections.ConfigDict()
  c.data.source.signature.enabled = False   # the paper's semi-synthetic source
  c.data.source.signature.strength = 1.0    # mean c/10 * strength for class c
  c.data.source.signature.std = 0.2
  c.data.target = ml_collections.ConfigDict()
  c.data.target.name = "sklearn_digits"
  c.data.target.train_split = "train"       # labelled target examples are drawn from here
  c.data.target.test_split = "test"         # final evaluation only
  c.data.target.num_train = 500             # the target training set D_t (class-balanced)
  c.data.target.num_val = 100               # held out from it for model selection
  c.data.num_source_classes = 10
  c.data.num_target_classes = 10
  c.data.shuffle_buffer = 10_000
  c.data.prefetch = 2

  # --- Model -----------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"   # small_cnn | resnet18 | resnet50
  c.model.conv_widths = (32, 64)
  c.model.feature_dim = 256
  c.model.batch_norm = False
  c.model.small_inputs = False

  # --- Optimisation ----------------------------------------------------------------------
  c.batch_size = 128           # global source batch
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"    # adam | adamw | sgd | momentum
  c.optimizer.lr = 1e-3
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"   # constant | cosine
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip = 0.0         # global-norm clip (0 = off)

  # --- Two-stage methods (finetune, l2sp, merlin_ft) -------------------------------------
  c.pretrained = ml_collections.ConfigDict()
  c.pretrained.path = ""       # an orbax checkpoint dir (a workdir or its checkpoints/) or a .safetensors
  c.pretrained.steps = 1000    # if no path: run `pretrain` for this many steps in WORKDIR/pretrain first

  # --- Evaluation, checkpoints, logging --------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.every = 200           # steps between target-validation evals (model selection)
  c.eval.batch_size = 500
  c.eval.probe_steps = 0       # 'probe' eval: gd steps of the fitted head (0 = inner.steps)
  c.eval.probe_lr = 0.0        # (0 = inner.lr)
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.log_every = 50
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1             # devices on the 'data' axis (-1 = all not on 'model')
  c.mesh.model = 1             # devices on the 'model' axis (>1: large leaves also split on it)
  c.mesh.param_sharding = "replicated"   # replicated | fsdp (params + optimizer state split on 'data')
  c.mesh.fsdp_min_size = 2**14 # leaves with fewer elements stay replicated (not worth a gather)
  return c


def large_image_pair(source: str, num_source_classes: int, target: str, num_target_classes: int,
                     num_train: int, num_val: int, arg: str | None = None,
                     source_eval_split: str = "validation") -> ml_collections.ConfigDict:
  """The recipe shared by the paper's ImageNet-scale pairs (ResNet at 224 px, streamed source).

  Only the datasets and the target's size differ between those pairs; every value here
  that the paper does not state is ours. `arg='local'` shrinks it for a smoke run (still
  needs the prepared data).
  """
  c = base_config()
  c.method = "merlin"
  c.total_steps = 20_000            # ours
  c.data.image_size = 224
  c.data.channels = 3
  c.data.source.name = source
  c.data.source.split = "train"
  c.data.source.eval_split = source_eval_split
  c.data.source.augment = "inception"   # random-resized crop + flip; eval: resize 256, crop 224
  c.data.source.in_memory = False
  c.data.target.name = target
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = num_train   # ours: the target's train split minus the validation split
  c.data.target.num_val = num_val       # ours: model selection only
  c.data.num_source_classes = num_source_classes
  c.data.num_target_classes = num_target_classes
  c.data.shuffle_buffer = 10_000    # ours
  c.model.name = "resnet18"         # ours (resnet50 also available)
  c.model.batch_norm = True
  c.batch_size = 256                # ours
  c.optimizer.name = "momentum"     # ours
  c.optimizer.lr = 0.1 * c.batch_size / 256   # ours: linear scaling from 0.1 at 256
  c.optimizer.weight_decay = 1e-4   # ours
  c.optimizer.schedule = "cosine"   # ours
  c.optimizer.warmup_steps = 500    # ours
  c.split.train_size = 256          # ours: per-step resampled D_t^tr / D_t^val
  c.split.val_size = 256            # ours
  c.inner.kind = "ridge"            # ours: a closed-form head is cheap for ~200 classes
  c.rho = 1.0                       # ours
  c.eval.every = 1000
  c.eval.batch_size = 256
  c.checkpoint_every = 1000
  if arg == "local":
    c.total_steps = 4
    c.batch_size = 8
    c.split.train_size = 8
    c.split.val_size = 8
    c.eval.every = 2
    c.eval.batch_size = 16
    c.log_every = 1
  return c
