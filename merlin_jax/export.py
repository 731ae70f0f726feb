"""WORKDIR/model.safetensors: the product of a run, self-describing.

The export is the model whose accuracy the run reported: the selected backbone (and its
state) with the head that produced `target_test_accuracy` stored as `params/target_head`
(for a 'probe' method, merlin/merlin_ft/pretrain, the head fitted at evaluation time; for
a 'learned' one, the trained target head), plus `params/source_head` when one was trained.
Its safetensors metadata says how to use it without the workdir: one key, 'merlin_jax',
holding a JSON object (one key: safetensors writes several in a random order, and a resumed
run's export must be the same bytes as an uninterrupted run's):

  format            'merlin_jax.export/2' (/1: the same without `digest`, still read)
  digest            'sha256:...' of every tensor (name, dtype, shape, bytes) and of these
                    fields without it: checked at load, a flipped byte does not load
                    (`errors.DamagedError`, "damaged: ...")
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

FORMAT = "merlin_jax.export/2"
FORMATS = ("merlin_jax.export/1", FORMAT)   # /1: written before digests; still loads
KEY = "merlin_jax"   # the one safetensors metadata key
# Wall-clock values differ between otherwise identical runs: not in the export.
TIMING_KEYS = ("train_seconds", "steps_per_sec")


def input_spec(config, example_input) -> dict:
  """What `inputs` the model takes and exactly how raw data became them (so that
  `Model.predict` applies the same transform to raw inputs of any size)."""
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
  spec = {"kind": "image", "shape": shape, "dtype": "float32", "range": [0.0, 1.0],
          "image_size": int(data.image_size), "channels": int(data.channels), "crop": crop,
          "scale": "uint8 / 255",
          "resize": {"method": "bilinear", "antialias": True, "library": "tensorflow"},
          "preprocessing": ("uint8 -> float32 / 255; " + (
              "resize the shorter side to image_size*256/224, central crop" if crop else
              "bilinear antialiased resize to image_size") + "; gray <-> RGB to channels")}
  stored = stored_resize(data.target.name)
  if stored:   # the dataset's own resize of its raw scans, before the pipeline's
    spec["stored"] = stored
    spec["preprocessing"] = (f"raw images resized to {stored['size']}x{stored['size']} "
                             f"({stored['method']}, as the dataset was built); "
                             + spec["preprocessing"])
  return spec


def stored_resize(name: str) -> dict | None:
  """How a dataset built here resized its raw images before storing them ({'size', 'method'}:
  its builder's STORED_RESIZE), or None (stored as found)."""
  import importlib
  try:
    module = importlib.import_module(f"merlin_jax.data.builders.{name}")
  except ImportError:
    return None
  return dict(getattr(module, "STORED_RESIZE", None) or {}) or None


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


def digest(flat: dict, fields: dict) -> str:
  """sha256 of every tensor (name, dtype, shape, bytes, in name order) and of the metadata
  fields other than 'digest'."""
  import hashlib
  import numpy as np
  h = hashlib.sha256()
  for name in sorted(flat):
    a = np.ascontiguousarray(flat[name])
    h.update(json.dumps([name, str(a.dtype), list(a.shape)]).encode())
    h.update(a.tobytes())
  h.update(json.dumps({k: v for k, v in fields.items() if k != "digest"},
                      sort_keys=True).encode())
  return "sha256:" + h.hexdigest()


def seal(meta: dict[str, str], flat: dict) -> dict[str, str]:
  """The metadata with its digest (checkpointing.export_safetensors calls this on the flat
  arrays it writes)."""
  fields = json.loads(meta[KEY])
  fields["digest"] = digest(flat, fields)
  return dict(meta, **{KEY: json.dumps(fields, sort_keys=True)})


def verify(path: str, flat: dict, fields: dict) -> None:
  """DamagedError unless an export/2's digest matches its tensors and fields."""
  from merlin_jax.errors import DamagedError
  if fields.get("format") != FORMAT:
    return   # export/1 (no digest) or not ours: api.load says what it is
  if fields.get("digest") != digest(flat, fields):
    raise DamagedError(path, "does not match its digest (its bytes changed after it was "
                       "written)")


def resolve(path: str) -> str:
  """The export of a workdir, or `path` itself; a workdir without one is a UserError that
  says why (an unfinished run, or not a workdir)."""
  from merlin_jax.runtime import fs, layout
  from merlin_jax.errors import UserError
  fs.check_reachable(path)   # seconds, not the storage client's minute of retries
  if not fs.is_dir(path):
    if not fs.exists(path):
      raise UserError(f"model {path} does not exist; give the workdir of a finished run or "
                      f"its {layout.EXPORT}")
    return path
  candidate = fs.join(path, layout.EXPORT)
  if fs.is_file(candidate):
    return candidate
  steps = sorted(int(n) for n in fs.listdir(fs.join(path, layout.CHECKPOINTS))
                 if n.isdigit())
  if steps:
    raise UserError(f"{path} holds an unfinished run (checkpoints up to step {steps[-1]}, no "
                    f"{layout.EXPORT} yet: it was stopped or is still running); "
                    "rerun its command to finish it, then load it")
  raise UserError(f"{path} is not the workdir of a run (no {layout.EXPORT}, no "
                  "checkpoints); give the workdir of a finished run or its "
                  f"{layout.EXPORT}")


def read(path: str) -> tuple[dict, dict]:
  """(flat arrays, metadata fields) of an export (a .safetensors file or a workdir holding
  one, local or a URI such as gs://...); the fields are {} for a file without merlin_jax
  metadata. Damaged files (a digest mismatch, a torn header) raise DamagedError."""
  from merlin_jax.runtime import fs
  from merlin_jax.errors import DamagedError, UserError
  from safetensors.numpy import load
  path = resolve(path)
  try:
    data = fs.read_bytes(path)
  except IsADirectoryError:
    raise UserError(f"model {path} is a directory; give a workdir or a .safetensors file"
                    ) from None
  except PermissionError:
    raise UserError(f"model {path} cannot be read (permission denied); fix its permissions"
                    ) from None
  try:
    meta = _parse_header(data)
  except ValueError as e:
    raise DamagedError(path, f"is not a readable safetensors file ({e})") from None
  try:
    fields = json.loads(meta[KEY]) if KEY in meta else {}
    if not isinstance(fields, dict):
      raise ValueError("not a JSON object")
  except ValueError as e:
    raise DamagedError(path, f"has unreadable merlin_jax metadata ({type(e).__name__})"
                       ) from None
  try:
    flat = load(data)
  except Exception as e:  # noqa: BLE001 - safetensors' own errors: a torn or edited file
    raise DamagedError(path, f"has unreadable tensors ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:120]})") from None
  verify(path, flat, fields)
  return flat, fields


def _parse_header(data: bytes) -> dict:
  """The `__metadata__` of a safetensors file's bytes (an 8-byte little-endian length, then
  that many bytes of JSON); ValueError when that is not what the bytes hold."""
  if len(data) < 8:
    raise ValueError(f"{len(data)} bytes, shorter than a header")
  size = int.from_bytes(data[:8], "little")
  if size > len(data) - 8:
    raise ValueError(f"a header of {size} bytes in a file of {len(data)}")
  try:
    header = json.loads(data[8:8 + size])
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"header: {type(e).__name__}") from None
  if not isinstance(header, dict):
    raise ValueError("header: not a JSON object")
  meta = header.get("__metadata__") or {}
  if not isinstance(meta, dict):
    raise ValueError("header: __metadata__ is not an object")
  return meta


def header_metadata(path: str) -> dict:
  """The `__metadata__` of a safetensors file (any URI), read without its tensors."""
  from merlin_jax.runtime import fs
  with fs.as_path(path).open("rb") as f:
    size = int.from_bytes(f.read(8), "little")
    return _parse_header(size.to_bytes(8, "little") + f.read(size))
