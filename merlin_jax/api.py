"""Use a trained model: `merlin_jax.load(workdir_or_file)` -> `Model`.

    model = merlin_jax.load("/tmp/merlin/digits")      # or .../model.safetensors
    model.predict(images)          # class indices [N]; images: uint8/float [N, H, W, C],
                                   # a list of image files, or model inputs as trained on
    model.logits(images)           # [N, K]
    model.features(images)         # h_phi(x) [N, D]
    model.classes, model.method, model.config, model.metrics

A text model takes strings or (sentence, sentence) pairs and tokenises them with its own
tokenizer (`config.data.text.tokenizer_dir`, e.g. the MiniLM weights); the architecture is
read from `config.model.hf_dir`, so that directory must exist where the model is loaded.

The model is the export of merlin_jax/export.py: the backbone selected on target validation
with the head that produced the run's `target_test_accuracy`. Inputs are evaluated in
batches of `config.eval.batch_size` padded to full size, as the run's own evaluation does,
so `model.accuracy(...)` on the target test set gives the reported number.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from merlin_jax import export as export_lib
from merlin_jax.errors import UserError


def load(path: str) -> "Model":
  """A finished run's workdir, or a model.safetensors written by merlin_jax >= export/1
  (a local path or a URI such as gs://BUCKET/dir)."""
  flat, meta = export_lib.read(path)
  if meta.get("format") != export_lib.FORMAT:
    raise UserError(f"{path} has no merlin_jax export metadata (format "
                    f"{meta.get('format')!r}); it was written before exports were "
                    "self-describing: rerun the final evaluation of that run")
  return Model(flat, meta)


class Model:
  """A loaded export: the backbone, its state and the evaluated target head."""

  def __init__(self, flat: dict, meta: dict):
    import jax
    import ml_collections
    from merlin_jax import evaluate
    from merlin_jax.runtime import checkpointing
    from merlin_jax.models import apply_head, make_backbone

    self.metadata = meta
    self.config = ml_collections.ConfigDict(meta["config"])
    self.method = meta["method"]
    self.num_classes = int(meta["num_classes"])
    self.classes = list(meta["classes"]) or [str(i) for i in range(self.num_classes)]
    self.input_spec = dict(meta["input"])
    self.metrics = dict(meta["metrics"])
    self.batch_size = int(self.config.eval.batch_size)
    example = self._example_input()
    self.backbone = make_backbone(self.config.model, example)
    bb_shape, state_shape = jax.eval_shape(self.backbone.init, jax.random.key(0), example)
    src = "the export"
    self.params = {"backbone": checkpointing.fill_from_flat(bb_shape, flat, "params/backbone",
                                                             src),
                   "target_head": {k: np.asarray(flat[f"params/target_head/{k}"])
                                   for k in ("w", "b")}}
    if "params/source_head/w" in flat:   # methods that train on the source
      self.params["source_head"] = {k: np.asarray(flat[f"params/source_head/{k}"])
                                    for k in ("w", "b")}
    self.model_state = (checkpointing.fill_from_flat(state_shape, flat, "model_state", src)
                        if state_shape else {})
    self._features = evaluate.eval_features(self.backbone)
    self._logits = jax.jit(lambda params, state, x: apply_head(
        params["target_head"], self._features(params, state, x)))
    self._tokenizer = None

  # --- inputs ---------------------------------------------------------------------------

  def _example_input(self):
    spec = self.input_spec
    if spec["kind"] == "text":
      return {k: np.zeros((1, spec["max_length"]), np.int32) for k in spec["keys"]}
    return np.zeros([1] + list(spec["shape"]), np.float32)

  def preprocess(self, inputs):
    """Raw inputs -> what the backbone takes (see the class docstring)."""
    kind = self.input_spec["kind"]
    if kind == "text":
      return inputs if isinstance(inputs, dict) else self.tokenize(inputs)
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
      mode = "RGB" if self.input_spec["channels"] == 3 else "L"
      return self.preprocess_images([_read_image(p, mode) for p in inputs])
    shape = tuple(self.input_spec["shape"])
    if isinstance(inputs, (list, tuple)):   # rows of one shape stack; images may differ
      same = inputs and all(np.shape(a) == np.shape(inputs[0]) for a in inputs)
      x = np.stack([np.asarray(a) for a in inputs]) if same else None
    else:
      x = np.asarray(inputs)
    if x is not None and tuple(x.shape[1:]) == shape and (kind == "arrays" or
                                                           x.dtype.kind == "f"):
      return x.astype(np.float32)          # already model inputs
    if kind == "arrays":
      raise UserError(f"this model takes float32 arrays [N, {self.input_spec['shape']}]")
    return self.preprocess_images(list(inputs))

  def preprocess_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 images [h, w, c] (any size) -> float32 [N, S, S, C] in [0, 1], the training
    pipeline's eval preprocessing (merlin_jax/data/preprocess.eval_image)."""
    from merlin_jax.data.preprocess import eval_image
    spec = self.input_spec
    out = []
    for img in images:
      img = np.asarray(img)
      if img.ndim == 2:
        img = img[..., None]
      if img.dtype != np.uint8:   # float in [0, 1]
        img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
      out.append(np.asarray(eval_image(img, size=spec["image_size"],
                                       channels=spec["channels"], crop=spec["crop"])))
    return np.stack(out).astype(np.float32)

  def tokenize(self, texts) -> dict:
    """Strings, or (a, b) pairs -> token arrays, with the model's own tokenizer."""
    from merlin_jax.data import text as text_lib
    spec = self.input_spec
    if self._tokenizer is None:
      self._tokenizer = text_lib.make_tokenizer(spec["tokenizer_dir"], spec["max_length"])
    texts = [texts] if isinstance(texts, (str, tuple)) else list(texts)
    pairs = all(isinstance(t, (tuple, list)) for t in texts)
    first = [t[0] if pairs else t for t in texts]
    second = [t[1] for t in texts] if pairs else None
    return text_lib.encode_pairs(self._tokenizer, first, second, spec["max_length"])

  # --- outputs --------------------------------------------------------------------------

  def _batched(self, fn, inputs) -> np.ndarray:
    from merlin_jax.data.interface import padded_batches
    x = self.preprocess(inputs)
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    out = []
    for b in padded_batches({"inputs": x, "label": np.zeros(n, np.int32)}, self.batch_size):
      keep = int(b["mask"].sum())
      out.append(np.asarray(fn(self.params, self.model_state, b["inputs"]))[:keep])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def features(self, inputs) -> np.ndarray:
    """h_phi(x): float32 [N, D] (eval mode)."""
    return self._batched(self._features, inputs)

  def logits(self, inputs) -> np.ndarray:
    """The evaluated target head on h_phi(x): float32 [N, num_classes]."""
    return self._batched(self._logits, inputs)

  def predict(self, inputs) -> np.ndarray:
    """Class indices int [N] (names: `model.classes[i]`)."""
    return np.argmax(self.logits(inputs), axis=-1)

  def accuracy(self, inputs, labels) -> float:
    return float(np.mean(self.predict(inputs) == np.asarray(labels)))

  def __repr__(self):
    return (f"Model(method={self.method!r}, classes={self.num_classes}, "
            f"input={self.input_spec['kind']}, target_test_accuracy="
            f"{self.metrics.get('target_test_accuracy')})")


def _read_image(path: str, mode: str) -> np.ndarray:
  from PIL import Image
  if not os.path.isfile(path):
    raise UserError(f"image {path} does not exist")
  with Image.open(path) as img:
    return np.asarray(img.convert(mode))   # palette / RGBA / 16-bit files: the model's mode
