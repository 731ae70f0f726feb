r"""Label inputs with a trained model; print the accuracy when labels exist.

  # a folder of images (sub-folders named after classes give the labels: accuracy printed)
  python -m merlin_jax.predict --model=/tmp/merlin/digits --images=DIR
  # a TFDS split with 'image' and 'label' features
  python -m merlin_jax.predict --model=/tmp/merlin/digits --tfds=sklearn_digits:test
  # the run's own target test set (reproduces its target_test_accuracy)
  python -m merlin_jax.predict --model=/tmp/merlin/digits --eval_set=target_test
  # text models: one example per line (a pair: two texts separated by a tab)
  python -m merlin_jax.predict --model=WORKDIR --text=FILE

Prints one `name<TAB>class` line per input (unless --quiet), then `accuracy A (N examples)`
when labels exist. Bad input (README "Bad input"): one line `merlin_jax: error: ...`, exit
status 2 (a damaged model file: 'damaged: ...'); unreachable storage: one line, status 74.
"""

from __future__ import annotations

import os

from absl import app, flags

from merlin_jax.errors import UserError

_MODEL = flags.DEFINE_string("model", None, "A finished run's workdir or its model.safetensors "
                             "(a local path or a URI such as gs://BUCKET/dir).")
_IMAGES = flags.DEFINE_string("images", None, "A folder of images (recursive); a sub-folder "
                              "named after a class (or its index) labels its images.")
_TFDS = flags.DEFINE_string("tfds", None, "NAME:SPLIT of a prepared TFDS dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default: the run's).")
_EVAL_SET = flags.DEFINE_string("eval_set", None, "An eval set of the run's own data, e.g. "
                                "target_test, target_val.")
_TEXT = flags.DEFINE_string("text", None, "A text file: one example per line, a pair as "
                            "'a<TAB>b'.")
_QUIET = flags.DEFINE_bool("quiet", False, "Print only the accuracy (or the count).")
flags.mark_flag_as_required("model")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _folder(model, root: str):
  """(paths, labels or None) of the images under root."""
  if not os.path.isdir(root):
    raise _error(f"--images={root} is not a directory")
  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise _error(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  index = {name: i for i, name in enumerate(model.classes)}
  labels = []
  for p in paths:
    top = os.path.relpath(p, root).split(os.sep)[0]
    labels.append(index.get(top, int(top) if top.isdigit() else None))
  return paths, (None if any(l is None for l in labels) else labels)


def _tfds_split(model, spec: str, data_dir: str):
  from merlin_jax.data import tfds_io
  from merlin_jax.data.preprocess import eval_image
  name, _, split = spec.partition(":")
  s = model.input_spec
  builder = tfds_io.get_builder(name, data_dir)
  fn = lambda x: eval_image(x, size=s["image_size"], channels=s["channels"], crop=s["crop"])
  return tfds_io.load_arrays(builder, name, data_dir, split or "test", fn)


def _eval_set(model, name: str, data_dir: str):
  from merlin_jax.data import pipeline
  cfg = model.config
  if data_dir:
    cfg.data.data_dir = data_dir
  data = pipeline.load_transfer_data(cfg.data, cfg.seed, need_source=False)
  if name == "target_val":
    return data.target_val["inputs"], data.target_val["label"]
  ev = data.eval_data.get(name)
  if ev is None or ev.arrays is None:
    raise _error(f"--eval_set={name}: the run's data has {['target_val'] + data.eval_sets()} "
                 "(streamed sets: use --tfds)")
  return ev.arrays["inputs"], ev.arrays["label"]


def _text_file(path: str):
  if not os.path.isfile(path):
    raise _error(f"--text={path} is not a file")
  try:
    with open(path, encoding="utf-8") as f:
      lines = [l.rstrip("\n") for l in f if l.strip()]
  except UnicodeDecodeError:
    raise _error(f"--text={path} is not UTF-8 text") from None
  if not lines:
    raise _error(f"--text={path} has no lines")
  return [tuple(l.split("\t", 1)) if "\t" in l else l for l in lines]


def _check_source(model) -> None:
  """The input flag must suit the model: --text for a text model, images otherwise."""
  kind = model.input_spec["kind"]
  if _TEXT.value and kind != "text":
    raise _error(f"--text: this is an {kind} model (it takes images); use --images, --tfds "
                 "or --eval_set")
  if (_IMAGES.value or _TFDS.value) and kind == "text":
    raise _error("this is a text model; use --text=FILE (one example per line) or --eval_set")


def _error(message: str) -> UserError:
  return UserError(message)


def main(argv):
  del argv
  import merlin_jax
  from merlin_jax.runtime.metrics import quiet_library_logs
  quiet_library_logs()
  sources = [f for f in (_IMAGES, _TFDS, _EVAL_SET, _TEXT) if f.value]
  if len(sources) != 1:
    raise _error("give exactly one of --images, --tfds, --eval_set, --text")
  model = merlin_jax.load(_MODEL.value)
  _check_source(model)
  data_dir = _DATA_DIR.value or model.config.data.data_dir
  labels, names = None, None
  if _IMAGES.value:
    names, labels = _folder(model, _IMAGES.value)
    inputs = names
  elif _TFDS.value:
    inputs, labels = _tfds_split(model, _TFDS.value, data_dir)
  elif _EVAL_SET.value:
    inputs, labels = _eval_set(model, _EVAL_SET.value, data_dir)
  else:
    inputs = _text_file(_TEXT.value)
    names = ["\t".join(t) if isinstance(t, tuple) else t for t in inputs]
  pred = model.predict(inputs)
  if not _QUIET.value:
    for i, p in enumerate(pred):
      print(f"{names[i] if names else i}\t{model.classes[int(p)]}")
  if labels is not None:
    import numpy as np
    acc = float(np.mean(pred == np.asarray(labels)))
    print(f"accuracy {acc:.4f} ({len(pred)} examples)")
  else:
    print(f"{len(pred)} examples labelled")


if __name__ == "__main__":
  from merlin_jax import boundary   # every failure: one line `merlin_jax: error: ...`
  boundary.HARD_EXIT_ON_STORAGE_FAULT = True
  app.run(boundary.entry("merlin_jax", main), flags_parser=boundary.flags_parser("merlin_jax"))
