"""Use a trained model: `merlin_jax.load(workdir_or_file)` -> `Model`.

    model = merlin_jax.load("/tmp/merlin/digits")      # or .../model.safetensors
    model.predict(images)          # class indices [N]; images: [N, H, W, C] or one image
                                   # [H, W, C] / [H, W], a list of arrays or image files
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

The input contract of an image model (README "Bad input"; anything else is refused with one
`errors.InputError` line naming what it takes):
  * integer dtypes (uint8, int64, ...) are pixel values 0..255, scaled by 1/255 exactly as
    in training; values outside 0..255 are refused;
  * float dtypes are pixels in [0, 1] (the model's range); floats outside it (e.g. 0..255
    floats) are refused, as are NaN and inf;
  * shapes: [N, H, W, C] or [N, H, W] (gray) is a batch; [H, W, C] with C in (1, 3, 4) or
    [H, W] is ONE image (a batch of one); at the model's size and channels taken as
    preprocessed; any other H, W: resized as the export records
    (`input_spec`: the dataset's own resize of its raw images, then the pipeline's);
    C = 4 drops alpha; an empty batch, rank 1 or rank >= 5 are refused;
  * file names: read with PIL (a non-image file, a decompression bomb: refused).
An 'arrays' model (the synthetic pair) takes float arrays [N, *shape] or one [*shape].
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from merlin_jax import boundary
from merlin_jax import export as export_lib
from merlin_jax.errors import DamagedError, InputError, UserError

MAX_PIXELS = 89_478_485   # per image: PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)


@boundary.api
def load(path: str) -> "Model":
  """A finished run's workdir, or a model.safetensors written by merlin_jax >= export/1
  (a local path or a URI such as gs://BUCKET/dir)."""
  path = str(path)
  flat, meta = export_lib.read(path)
  if meta.get("format") not in export_lib.FORMATS:
    raise UserError(f"{path} has no merlin_jax export metadata (format "
                    f"{meta.get('format')!r}); it was written before exports were "
                    "self-describing: rerun the final evaluation of that run")
  try:
    return Model(flat, meta)
  except (KeyError, TypeError, ValueError) as e:   # fields missing or of the wrong type
    raise DamagedError(export_lib.resolve(path), f"has incomplete metadata "
                       f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


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
    """Raw inputs -> what the backbone takes (the contract: the module docstring)."""
    kind = self.input_spec["kind"]
    if kind == "text":
      if isinstance(inputs, dict):
        return inputs
      return self.tokenize(inputs)
    if isinstance(inputs, (str, os.PathLike)):
      inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
      if not inputs:
        raise InputError("no inputs (an empty list); give at least one image")
      if all(isinstance(p, (str, os.PathLike)) for p in inputs):
        if kind != "image":
          raise InputError(f"this model takes float arrays [N, {self.input_spec['shape']}], "
                           "not file names")
        mode = "RGB" if self.input_spec["channels"] == 3 else "L"
        return self.preprocess_images([_read_image(os.fspath(p), mode) for p in inputs])
      if any(isinstance(p, (str, os.PathLike)) for p in inputs):
        raise InputError("a list mixing file names and arrays; give one kind")
      rows = [_as_array(a, f"input {i}") for i, a in enumerate(inputs)]
      if kind == "image" and any(np.shape(r) != np.shape(rows[0]) for r in rows):
        return self.preprocess_images([self._one_image(r, f"input {i}")
                                       for i, r in enumerate(rows)])
      try:
        x = np.stack(rows)
      except ValueError:
        raise InputError("the list's arrays have different shapes; give "
                         f"[{', '.join(map(str, self.input_spec['shape']))}] each") from None
    else:
      x = _as_array(inputs, "inputs")
    if kind == "arrays":
      return self._arrays(x)
    return self._images(x)

  def _arrays(self, x: np.ndarray) -> np.ndarray:
    shape = tuple(self.input_spec["shape"])
    want = f"float arrays [N, {', '.join(map(str, shape))}] (or one [{', '.join(map(str, shape))}])"
    if x.dtype.kind not in "fiu":
      raise InputError(f"inputs of dtype {x.dtype}: this model takes {want}")
    if tuple(x.shape) == shape:
      x = x[None]
    if tuple(x.shape[1:]) != shape:
      raise InputError(f"inputs of shape {list(x.shape)}: this model takes {want}")
    if len(x) == 0:
      raise InputError("no inputs (an empty batch); give at least one row")
    _check_finite(x)
    return x.astype(np.float32)

  def _images(self, x: np.ndarray) -> np.ndarray:
    """An image array of any contract shape -> model inputs (uint8 rows at the model's size
    pass as they are: the backbone scales them exactly as in training)."""
    c = self.input_spec["channels"]
    if x.ndim == 2:
      x = x[None, ..., None]           # one gray image: a batch of one
    elif x.ndim == 3 and x.shape[-1] in (1, 3, 4):
      x = x[None]                      # one image: a batch of one
    elif x.ndim == 3:
      x = x[..., None]                 # a batch of gray images [N, H, W]
    if x.ndim != 4:
      raise InputError(f"inputs of shape {list(x.shape)} (rank {x.ndim}); give images "
                       "[N, H, W, C] or [N, H, W], or one image [H, W, C] or [H, W]")
    if len(x) == 0:
      raise InputError(f"no inputs (an empty batch of shape {list(x.shape)}); give at "
                       "least one image")
    if x.shape[-1] not in (1, 3, 4) or 0 in x.shape[1:3]:
      raise InputError(f"images of shape {list(x.shape[1:])}: the channels (last axis) "
                       "must be 1, 3 or 4 and the sides non-empty")
    if x.shape[1] * x.shape[2] > MAX_PIXELS:
      raise InputError(f"images of {x.shape[1]}x{x.shape[2]} pixels: more than {MAX_PIXELS} "
                       "per image (a decompression-bomb size); resize them first")
    x = _pixels(x)
    size = self.input_spec["image_size"]
    if x.shape[1:] == (size, size, c):
      # At the model's size: already preprocessed (the pipeline's own arrays, cropped ones
      # too); uint8 rows are scaled by the backbone exactly as in training.
      return x
    return self.preprocess_images(list(x))

  def _one_image(self, img: np.ndarray, what: str) -> np.ndarray:
    if img.ndim == 2:
      img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4) or 0 in img.shape:
      raise InputError(f"{what} has shape {list(img.shape)}; an image is [H, W, C] (C = 1, "
                       "3 or 4) or [H, W]")
    return _pixels(img[None])[0]

  def preprocess_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Images [h, w, c] (any size; uint8, or float in [0, 1]) -> float32 [N, S, S, C]: the
    dataset's own resize of raw images when the export records one (`stored`), then the
    training pipeline's eval preprocessing (merlin_jax/data/preprocess.eval_image)."""
    from merlin_jax.data.preprocess import eval_image
    spec = self.input_spec
    stored = spec.get("stored")
    out = []
    for img in images:
      img = np.asarray(img)
      if img.ndim == 2:
        img = img[..., None]
      if img.shape[-1] == 4:
        img = img[..., :3]             # RGBA: alpha dropped
      if stored and img.shape[:2] != (stored["size"], stored["size"]):
        img = _stored_resize(img, stored)
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
    if not texts:
      raise InputError("no inputs (an empty list); give at least one text")
    if not all(isinstance(t, str) or (isinstance(t, (tuple, list)) and len(t) == 2 and
                                      all(isinstance(u, str) for u in t)) for t in texts):
      raise InputError("this text model takes strings or (sentence, sentence) pairs")
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

  @boundary.api
  def features(self, inputs) -> np.ndarray:
    """h_phi(x): float32 [N, D] (eval mode)."""
    return self._batched(self._features, inputs)

  @boundary.api
  def logits(self, inputs) -> np.ndarray:
    """The evaluated target head on h_phi(x): float32 [N, num_classes]."""
    return self._batched(self._logits, inputs)

  @boundary.api
  def predict(self, inputs) -> np.ndarray:
    """Class indices int [N] (names: `model.classes[i]`)."""
    return np.argmax(self.logits(inputs), axis=-1)

  @boundary.api
  def accuracy(self, inputs, labels) -> float:
    pred = self.predict(inputs)
    labels = np.asarray(labels)
    if labels.shape != pred.shape:
      raise InputError(f"{labels.size} labels for {pred.size} inputs")
    return float(np.mean(pred == labels))

  def __repr__(self):
    return (f"Model(method={self.method!r}, classes={self.num_classes}, "
            f"input={self.input_spec['kind']}, target_test_accuracy="
            f"{self.metrics.get('target_test_accuracy')})")


def _as_array(x, what: str) -> np.ndarray:
  try:
    a = np.asarray(x)
  except (ValueError, TypeError) as e:   # ragged nested lists, ...
    raise InputError(f"{what} is not an array ({' '.join(str(e).split())[:100]})") from None
  if a.dtype.kind not in "biuf":
    raise InputError(f"{what} of dtype {a.dtype}: give numbers (uint8/int pixel values "
                     "0..255 or floats in [0, 1]), or image file names")
  return a


def _check_finite(x: np.ndarray) -> None:
  if x.dtype.kind == "f":
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
      raise InputError(f"inputs hold {bad} NaN/inf value(s); the model would answer anything "
                       "on them: fix or drop those images")


def _pixels(x: np.ndarray) -> np.ndarray:
  """Images of any numeric dtype -> uint8 pixel values or float32 in [0, 1] (the contract:
  integers are pixel values 0..255, floats are in [0, 1]); anything else: InputError."""
  if x.dtype == np.uint8:
    return x
  if x.dtype.kind == "b":
    raise InputError("boolean images: give uint8/int pixel values 0..255 or floats in [0, 1]")
  if x.dtype.kind in "iu":
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
      raise InputError(f"integer pixel values must be 0..255 (got {lo}..{hi}); scale them "
                       "to 8 bits (e.g. 16-bit images: // 257)")
    return x.astype(np.uint8)
  _check_finite(x)
  lo, hi = float(x.min()), float(x.max())
  if lo < 0.0 or hi > 1.0:
    hint = (" (0..255 floats: divide by 255, or pass them as uint8)" if hi <= 255.0 and
            lo >= 0.0 else "")
    raise InputError(f"float pixels must be in [0, 1] (got {lo:.4g}..{hi:.4g}){hint}")
  return x.astype(np.float32)


def _stored_resize(img: np.ndarray, stored: dict) -> np.ndarray:
  """A raw image through the dataset's own resize (its builder's STORED_RESIZE: PIL's,
  on uint8 pixels, as the stored images were made)."""
  from PIL import Image
  if img.dtype != np.uint8:
    img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
  method = {"pil_bicubic": Image.BICUBIC, "pil_bilinear": Image.BILINEAR,
            "pil_lanczos": Image.LANCZOS}[stored["method"]]
  side = int(stored["size"])
  chans = [np.asarray(Image.fromarray(img[..., k], mode="L").resize((side, side), method))
           for k in range(img.shape[-1])]
  return np.stack(chans, axis=-1).astype(np.uint8)


def _read_image(path: str, mode: str) -> np.ndarray:
  """An image file as uint8 [h, w, c] in the model's mode; anything else: one InputError."""
  import warnings
  from PIL import Image, UnidentifiedImageError
  if not os.path.isfile(path):
    raise InputError(f"image {path} does not exist" + (
        " (a directory)" if os.path.isdir(path) else ""))
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        return np.asarray(img.convert(mode))   # palette / RGBA / 16-bit: the model's mode
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise InputError(f"image {path} is too large to decode safely ({e.args[0].split('.')[0]}); "
                     "resize it first") from None
  except UnidentifiedImageError:
    raise InputError(f"{path} is not an image PIL can read (corrupt, or another kind of file "
                     "with an image name); remove it or convert it") from None
  except (OSError, SyntaxError, ValueError) as e:   # truncated or damaged image data
    raise InputError(f"image {path} is damaged ({type(e).__name__}: "
                     f"{' '.join(str(e).split())[:100]}); remove or replace it") from None
