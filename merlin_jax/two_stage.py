"""Where a two-stage method's pre-trained start comes from (finetune, l2sp, merlin_ft, ...).

`config.pretrained.path` names the weights (a `model.safetensors`, a workdir holding one, or
whatever the backbone's own loader accepts, e.g. a Hugging Face BERT directory). When it is
empty, the training program runs a separate first stage (`train.pretrain_stage`: its own
run, lock and log line) that trains `pretrain_config(config)` in `WORKDIR/pretrain`
(resumable like any run; a finished one is read back, not re-run); `merlin_jax.compare`
shares one such run per seed. Then

    backbone_params, model_state, heads = load_start(path, backbone, ...)

This module imports nothing of the training program (tests/test_architecture.py checks the
import graph has no cycle).
"""

from __future__ import annotations

import copy

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


def pretrain_finished(pre_workdir: str) -> bool:
  """The pretrain run in pre_workdir has its final record and its exported weights."""
  jsonl = fs.join(pre_workdir, JSONL)
  records = read_jsonl(jsonl) if fs.exists(jsonl) else []
  return bool(records and records[-1].get("final")
              and fs.is_file(fs.join(pre_workdir, checkpointing.EXPORT)))


def load_start(path: str, backbone, params_template, state_template,
               heads: tuple[str, ...] = ()):
  """(backbone params, model_state, {head: params}) of the pre-trained start at `path`,
  read by the backbone's own reader (`Backbone.read_weights`) and checked leaf by leaf
  against the templates; `heads` (e.g. 'source_head') are taken from the export too."""
  flat = backbone.read_weights(path)
  params = checkpointing.fill_from_flat(params_template["backbone"], flat, "params/backbone",
                                        path)
  state = (checkpointing.fill_from_flat(state_template, flat, "model_state", path)
           if state_template else {})
  head_params = {h: checkpointing.fill_from_flat(params_template[h], flat, f"params/{h}", path)
                 for h in heads}
  return params, state, head_params
