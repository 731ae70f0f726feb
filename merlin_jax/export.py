"""WORKDIR/model.safetensors: the product of a run, self-describing.

The export is the model whose accuracy the run reported: the selected backbone (and its
state) with the head that produced `target_test_accuracy` stored as `params/target_head`
(for a 'probe' method, merlin/merlin_ft/pretrain, the head fitted at evaluation time; for
a 'learned' one, the trained target head), plus `params/source_head` when one was trained.
Its safetensors metadata says how to use it without the workdir: one key, 'merlin_jax',
holding a JSON object (one key: safetensors writes several in a random order, and a resumed
run's export must be the same bytes as an uninterrupted run's):

  format            'merlin_jax.export/1'
  method, eval_head the method and how its target accuracy was measured
  num_classes       the target head's classes; `classes` their names ([] if unknown)
  input             the model input and its preprocessing (see `input_spec`)
  config            the run's full config (nested)
  metrics           the final metrics the export reproduces (timings left out, for the
                    same reason)

`merlin_jax.load` (merlin_jax/api.py) reads it back.
"""

from __future__ import annotations

import json

FORMAT = "merlin_jax.export/1"
KEY = "merlin_jax"   # the one safetensors metadata key
# Wall-clock values differ between otherwise identical runs: not in the export.
TIMING_KEYS = ("train_seconds", "steps_per_sec")


def input_spec(config, example_input) -> dict:
  """What `inputs` the model takes and how raw data becomes them."""
  data = config.data
  if isinstance(example_input, dict):   # text: token arrays
    return {"kind": "text", "keys": sorted(example_input),
            "max_length": int(data.text.max_length), "fields": list(data.text.fields),
            "tokenizer_dir": data.text.tokenizer_dir,
            "preprocessing": "[CLS] a [SEP] (b [SEP]) with the tokenizer in tokenizer_dir, "
                             "truncated longest-first, padded to max_length"}
  shape = [int(d) for d in example_input.shape[1:]]
  if data.source.name == "synthetic" or data.target.name == "synthetic":
    return {"kind": "arrays", "shape": shape, "dtype": "float32",
            "preprocessing": "none (the synthetic pair's float32 arrays)"}
  crop = data.source.augment == "inception"
  return {"kind": "image", "shape": shape, "dtype": "float32", "range": [0.0, 1.0],
          "image_size": int(data.image_size), "channels": int(data.channels), "crop": crop,
          "preprocessing": ("uint8 -> float32 / 255; " + (
              "resize the shorter side to image_size*256/224, central crop" if crop else
              "bilinear antialiased resize to image_size") + "; gray <-> RGB to channels")}


def metadata(config, method, num_classes: int, class_names, example_input,
             final: dict) -> dict[str, str]:
  """The safetensors metadata of an export: {KEY: JSON of the fields above}."""
  metrics = {k: v for k, v in final.items() if k not in TIMING_KEYS}
  fields = {"format": FORMAT, "method": method.name, "eval_head": method.eval_head,
            "num_classes": int(num_classes), "classes": list(class_names or []),
            "input": input_spec(config, example_input),
            "config": json.loads(config.to_json()), "metrics": metrics}
  return {KEY: json.dumps(fields, sort_keys=True)}


def exported_tree(params, model_state, head) -> dict:
  """{'params': backbone, [source_head], target_head = the evaluated head; 'model_state'}."""
  out = {"backbone": params["backbone"], "target_head": head}
  if "source_head" in params:
    out["source_head"] = params["source_head"]
  return {"params": out, "model_state": model_state}


def read(path: str) -> tuple[dict, dict]:
  """(flat arrays, metadata fields) of an export (a .safetensors file or a workdir holding
  one, local or a URI such as gs://...); the fields are {} for a file without merlin_jax
  metadata."""
  from merlin_jax.runtime import checkpointing
  path = checkpointing.resolve_pretrained(path)
  flat = checkpointing.load_safetensors(path, what="model", missing_hint="give a workdir of a "
                                        "finished run or its model.safetensors")
  meta = _header_metadata(path)
  return flat, (json.loads(meta[KEY]) if KEY in meta else {})


def _header_metadata(path: str) -> dict:
  """The `__metadata__` of a safetensors header (the format: an 8-byte little-endian
  length, then that many bytes of JSON); read without the tensors, from any URI."""
  from merlin_jax.runtime import fs
  with fs.as_path(path).open("rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
  return dict(header.get("__metadata__") or {})
