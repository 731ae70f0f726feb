"""The public config interface every experiment shares. Each `configs/*.py` starts from
`base_config()` and overrides what differs (recipes shared by several files: configs/common.py);
keys not defined here are rejected when the config is loaded (the config is locked), so a
typo in `--config.foo=...` fails loudly. Every key a config file sets is declared here.

`load_config('configs/x.py:arg')` loads a config file the way --config does;
`override(config, {'inner.steps': 5})` sets dotted keys the way --config.inner.steps=5 does.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, Mapping

import ml_collections

from merlin_jax import errors


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- What to run -----------------------------------------------------------------------
  c.method = "merlin"          # merlin | merlin_ft | target_only | pretrain | finetune | joint | l2sp
  c.seed = 0
  c.total_steps = 1000         # outer steps

  # --- Method hyperparameters (model selection on target validation only) ---------------
  # Each method declares its own (merlin_jax/methods/<name>.py, `HParam`: e.g. rho,
  # split.train_size, split.val_size for MeRLin; alpha for joint; alpha, beta for L2-SP;
  # target_batch_size for the target-head methods); they are added below, with their
  # defaults, by `_add_method_hyperparameters`.
  c.label_smoothing = 0.0

  # Inner solver of the target head (merlin, merlin_ft; also the 'probe' evaluation).
  c.inner = ml_collections.ConfigDict()
  c.inner.kind = "gd"          # gd | ridge | implicit
  c.inner.steps = 20           # n
  c.inner.lr = 1.0             # eta (with step_size='normalized': relative to 1/L_hat, stable below 2)
  # 'normalized' (ours): eta / L_hat, L_hat a bound on the head loss's curvature, stable at
  # any feature scale. 'fixed': the paper's plain eta; it diverged on our digits pair once
  # feature norms grew (see WORKSPACE.md), so it is not the default.
  c.inner.step_size = "normalized"
  c.inner.first_order = False
  c.inner.remat = True         # jax.checkpoint on the scan body
  # gd: auto | primal | dual (inner.gd_form): the same steps; 'auto' runs the dual (an
  # N_tr x N_tr Gram matrix) when N_tr <= feature dim, ~5x cheaper per step at 100 x 256.
  c.inner.gd_form = "auto"
  c.inner.init = "zeros"       # zeros | random
  c.inner.weight_decay = 0.0
  c.inner.ridge_lambda = 1.0
  c.inner.ridge_scale = 1.0
  c.inner.tol = 1e-6           # implicit: gradient-norm tolerance of the solve

  # --- Data ------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.kind = "image"        # image | text (sentence(-pair) targets: merlin_jax/data/text.py)
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
  c.data.source.image_key = "image"   # the TFDS features holding the image and the class label
  c.data.source.label_key = "label"
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
  c.data.target.image_key = "image"         # the TFDS features holding the image and the class label
  c.data.target.label_key = "label"
  c.data.num_source_classes = 10
  c.data.num_target_classes = 10
  c.data.shuffle_buffer = 10_000
  c.data.prefetch = 2
  c.data.text = ml_collections.ConfigDict()  # data.kind='text' only
  c.data.text.tokenizer_dir = ""            # the weights' HF directory (vocab.txt / tokenizer.json)
  c.data.text.max_length = 128              # tokens per example, pairs truncated longest-first
  c.data.text.fields = ("sentence1", "sentence2")   # the TFDS features: one text or a pair

  # --- Model -----------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"   # small_cnn | resnet18 | resnet50
  c.model.conv_widths = (32, 64)
  c.model.feature_dim = 256
  c.model.batch_norm = False
  c.model.small_inputs = False
  # float32 | bfloat16: the activations' and matmuls' dtype (mixed precision); parameters,
  # optimizer state, batch-norm statistics, losses and the inner solve stay float32.
  c.model.dtype = "float32"
  # model.name='bert' only (merlin_jax/models/bert.py).
  c.model.hf_dir = ""          # Hugging Face BERT directory: the architecture (config.json)
  c.model.num_layers = 0       # keep the first layers only (0 = all)
  c.model.pooling = "pooler"   # pooler | cls | mean: the feature the heads read
  c.model.remat = False        # jax.checkpoint on every encoder block (also resnet: every residual block)

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
  _add_method_hyperparameters(c)
  return c


def _add_method_hyperparameters(c: ml_collections.ConfigDict) -> None:
  """Every registered method's hyperparameters as config keys, with their defaults."""
  from merlin_jax import methods  # importing it registers every method of the package
  for hp in methods.declared().values():
    *sections, leaf = hp.key.split(".")
    node = c
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[leaf] = hp.default


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/file.py[:arg]` (what --config takes) -> that file's `get_config(arg)`.

  `spec` may also name a shipped config ('digits:local': merlin_jax/config_names.py). A
  shipped file is imported as the module `merlin_jax.configs.<name>`; any other file is
  loaded from its location. The config is returned unlocked, as the file made it.
  """
  from merlin_jax import config_names
  path, _, arg = config_names.resolve(spec).partition(":")
  if not os.path.isfile(path):
    raise errors.UserError(f"config file {path} not found ({config_names.missing_hint()})")
  directory, name = os.path.split(os.path.realpath(path))
  module_name = os.path.splitext(name)[0]
  if directory == config_names.configs_dir() and module_name.isidentifier():
    module = importlib.import_module(f"merlin_jax.configs.{module_name}")
  else:  # a config outside configs/: a fresh module of its own
    spec_ = importlib.util.spec_from_file_location(f"_config_{module_name}", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def get_key(config, key: str):
  """config['inner.steps'] -> config.inner.steps; an unknown key is a ConfigError."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise errors.ConfigError(key, "no such key (the keys are those of "
                               "merlin_jax/config_base.py)")
    node = node[part]
  return node


def override(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys in place, e.g. override(c, {"inner.steps": 5, "rho": 3}); returns c.

  Every key must exist. A scalar value is cast to the type of the key's current value
  (3 -> 3.0 for rho, 5.0 -> 5 for inner.steps, 0 -> False for a bool), so grid values
  parsed from a command line fit the key whatever their spelling.
  """
  flat = {}
  for key, value in overrides.items():
    old = get_key(config, key)
    if isinstance(old, bool):
      value = bool(value)
    elif isinstance(old, (int, float, str)):
      value = type(old)(value)
    flat[key] = value
  config.update_from_flattened_dict(flat)
  return config
