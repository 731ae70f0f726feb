"""Where a two-stage method's pre-trained start comes from (finetune, l2sp, merlin_ft, ...).

One mechanism, used by the training program and by `merlin_jax.compare` alike:

    path = pretrained_path(config, workdir)   # config.pretrained.path, or a pretrain run
    backbone_params, model_state, heads = load_start(config, workdir, backbone, ...)

`config.pretrained.path` names the weights (a `model.safetensors`, a workdir holding one, or
whatever the backbone's own loader accepts, e.g. a Hugging Face BERT directory). When it is
empty, `run_pretrain` trains `pretrain` for `config.pretrained.steps` steps in
`WORKDIR/pretrain` first (resumable like any run; a finished one is read back, not re-run).
"""

from __future__ import annotations

import copy

from absl import logging

from merlin_jax.runtime import checkpointing, fs
from merlin_jax.runtime.metrics import JSONL, read_jsonl

PRETRAIN_DIR = "pretrain"


def pretrain_config(config):
  """The `pretrain` run whose export is the start of config's two-stage method."""
  pre = copy.deepcopy(config)
  with pre.unlocked():
    pre.method = "pretrain"
    pre.total_steps = int(config.pretrained.steps)
    pre.pretrained.path = ""
  return pre


def run_pretrain(config, pre_workdir: str) -> str:
  """Runs (or resumes, or reads back) `pretrain_config(config)` in pre_workdir; returns the
  path of its exported weights."""
  from merlin_jax import train  # the training program runs this stage too: import late
  if not pretrain_finished(pre_workdir):
    pre = pretrain_config(config)
    logging.info("the start of the two-stage methods: running `pretrain` for %d steps in %s",
                 pre.total_steps, pre_workdir)
    train.train_and_evaluate(pre, pre_workdir)
  return fs.join(pre_workdir, checkpointing.EXPORT)


def pretrain_finished(pre_workdir: str) -> bool:
  """The pretrain run in pre_workdir has its final record and its exported weights."""
  jsonl = fs.join(pre_workdir, JSONL)
  records = read_jsonl(jsonl) if fs.exists(jsonl) else []
  return bool(records and records[-1].get("final")
              and fs.is_file(fs.join(pre_workdir, checkpointing.EXPORT)))


def pretrained_path(config, workdir: str) -> str:
  """config.pretrained.path if set, else the export of a pretrain run in WORKDIR/pretrain."""
  if config.pretrained.path:
    return config.pretrained.path
  return run_pretrain(config, fs.join(workdir, PRETRAIN_DIR))


def load_start(config, workdir: str, backbone, params_template, state_template,
               heads: tuple[str, ...] = ()):
  """(backbone params, model_state, {head: params}) of the pre-trained start, read by the
  backbone's own reader (`Backbone.read_weights`) and checked leaf by leaf against the
  templates; `heads` (e.g. 'source_head') are taken from the export too."""
  path = pretrained_path(config, workdir)
  flat = backbone.read_weights(path)
  params = checkpointing.fill_from_flat(params_template["backbone"], flat, "params/backbone",
                                        path)
  state = (checkpointing.fill_from_flat(state_template, flat, "model_state", path)
           if state_template else {})
  head_params = {h: checkpointing.fill_from_flat(params_template[h], flat, f"params/{h}", path)
                 for h in heads}
  return params, state, head_params
