"""The helpers the test modules share (no test module imports another; conftest.py holds the
shared fixtures): the repository's paths, a tiny config, the CLI run in-process, workdir
digests and damage, float64, numpy-filled backbones, on-disk fixtures (a random HF BERT,
a Fashion-MNIST IDX dir)."""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py[:arg] as --config loads it."""
  from merlin_jax.config_base import load_config as load
  return load(os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else ""))


def tiny_config(method="merlin", **overrides):
  """`configs/synthetic.py` (runs a step in well under a second) with `method` and dotted-key
  overrides, e.g. tiny_config("joint", **{"optimizer.lr": 0.1})."""
  from merlin_jax.config_base import override
  c = load_config("synthetic")
  c.method = method
  return override(c, overrides)


# --- the command line, in this process ---------------------------------------------------


PREFIX = "merlin_jax: error: "


def run_cli(args, capfd, config=CONFIG, workdir=None):
  """`python -m merlin_jax.main --config=CONFIG --workdir=WORKDIR ARGS` in this process.

  -> (exit code, stderr). Resets absl's flags (and the `--config.*` override flags that
  ml_collections registers per parse, from sys.argv) so calls are independent.
  """
  from absl import flags
  from merlin_jax import main
  argv = ["merlin_jax.main"] + ([f"--config={config}"] if config else []) + (
      [f"--workdir={workdir}"] if workdir else []) + list(args)
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  sys.modules.pop("config_config", None)   # config_flags' module of the last --config file
  capfd.readouterr()
  old_argv, sys.argv = sys.argv, argv
  try:
    with pytest.raises(SystemExit) as e:
      main.run(argv)
  finally:
    sys.argv = old_argv
  code = e.value.code
  return (0 if code is None else code), capfd.readouterr().err


class StderrCapture:
  """capfd stand-in for a module-scoped fixture (stderr is left alone)."""

  def readouterr(self):
    return type("Out", (), {"err": "", "out": ""})()


def assert_one_line_error(code, err, fragment=None):
  assert code == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("merlin_jax:")]
  assert len(lines) == 1, err[-3000:]
  assert err.strip().splitlines()[-1] == lines[0]          # the last thing printed
  if fragment:
    assert fragment in lines[0], lines[0]
  return lines[0][len(PREFIX):]


# --- workdirs: digests, damage, subprocess runs -----------------------------------------


def snapshot(workdir):
  """relative path -> sha256 of every file (checkpoints, best, metrics, config, export...)."""
  out = {}
  for f in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True, include_hidden=True)):
    if os.path.isfile(f):
      with open(f, "rb") as fh:
        out[os.path.relpath(f, workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def digest(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def tree_digest(directory):
  out = {}
  for f in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
    if os.path.isfile(f):
      out[os.path.relpath(f, directory)] = digest(f)
  return out


def data_files(step_dir):
  return [f for f in glob.glob(os.path.join(step_dir, "**"), recursive=True)
          if os.path.isfile(f)]


def flip_one_bit(step_dir):
  """One bit of array data that orbax restores without complaint, to other values; only our
  digest catches it. The data files are compressed and where a flip lands in them depends on
  write order, so most positions break decoding (orbax's error, a different path): try
  positions until one restores silently."""
  import orbax.checkpoint as ocp
  item = os.path.join(step_dir, "default")
  leaves = lambda: [np.asarray(x) for x in jax.tree.leaves(  # noqa: E731
      ocp.StandardCheckpointer().restore(item))]
  before = leaves()
  files = [f for f in data_files(step_dir) if f"{os.sep}d{os.sep}" in f]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "rb") as fh:
    data = bytearray(fh.read())
  for frac in np.linspace(0.4, 0.95, 56):
    i = int(len(data) * frac)
    data[i] ^= 0x01
    with open(biggest, "wb") as fh:
      fh.write(data)
    try:
      after = leaves()
      if any(not np.array_equal(a, b) for a, b in zip(after, before)):
        return
    except Exception:  # noqa: BLE001 - a flip that breaks decoding: try another position
      pass
    data[i] ^= 0x01
  with open(biggest, "wb") as fh:
    fh.write(data)
  raise AssertionError(f"no one-bit flip of {biggest} restores silently")


def subprocess_env(cache, **extra):
  """The environment of a CLI subprocess: 1 CPU device, no TensorBoard, the persistent
  compilation cache in `cache` (shared by the subprocesses), plus `extra`."""
  return dict(os.environ, **extra, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


# --- numerics -----------------------------------------------------------------------------


@contextlib.contextmanager
def x64():
  """float64 inside the block only (restores the previous setting afterwards)."""
  if hasattr(jax, "enable_x64"):
    with jax.enable_x64(True):
      yield
  else:  # older jax: flip the global flag and put it back
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
      yield
    finally:
      jax.config.update("jax_enable_x64", previous)


def numpy_init(backbone, example_shape, rng):
  """A backbone's (params, state) with Flax's structure, filled by numpy.

  Flax's own init compiles every initializer (seconds on a busy 2-core machine) and is not
  what these tests are about. Kernels ~ N(0, 1/fan_in), biases small, batch-norm scale 1,
  running mean 0 and variance 1 (Flax's defaults).
  """
  import jax.numpy as jnp
  import numpy as np

  shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros(example_shape)))

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    if name == "bias":
      return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return np.zeros(leaf.shape, leaf.dtype)
    raise AssertionError(f"unexpected variable {jax.tree_util.keystr(path)}")

  return jax.tree_util.tree_map_with_path(fill, shapes)


# --- files on disk -------------------------------------------------------------------------


TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=24, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_act="gelu")


def write_random_hf_bert(path, arch=TINY, seed=0, prefix=""):
  """A random BERT in the HF layout: config.json, model.safetensors, vocab.txt."""
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
  t = {}

  def lin(name, out_dim, in_dim):
    t[f"{name}.weight"] = rng.normal(0, 0.2, (out_dim, in_dim)).astype(np.float32)
    t[f"{name}.bias"] = rng.normal(0, 0.1, (out_dim,)).astype(np.float32)

  def ln(name):
    t[f"{name}.weight"] = (1 + rng.normal(0, 0.1, (h,))).astype(np.float32)
    t[f"{name}.bias"] = rng.normal(0, 0.1, (h,)).astype(np.float32)

  t["embeddings.word_embeddings.weight"] = rng.normal(0, 1, (arch["vocab_size"], h)).astype(np.float32)
  t["embeddings.position_embeddings.weight"] = rng.normal(
      0, 1, (arch["max_position_embeddings"], h)).astype(np.float32)
  t["embeddings.token_type_embeddings.weight"] = rng.normal(
      0, 1, (arch["type_vocab_size"], h)).astype(np.float32)
  ln("embeddings.LayerNorm")
  for l in range(n):
    p = f"encoder.layer.{l}"
    for m in ("query", "key", "value"):
      lin(f"{p}.attention.self.{m}", h, h)
    lin(f"{p}.attention.output.dense", h, h)
    ln(f"{p}.attention.output.LayerNorm")
    lin(f"{p}.intermediate.dense", i, h)
    lin(f"{p}.output.dense", h, i)
    ln(f"{p}.output.LayerNorm")
  lin("pooler.dense", h, h)
  os.makedirs(path, exist_ok=True)
  save_file({prefix + k: v for k, v in t.items()}, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(arch, model_type="bert", architectures=["BertModel"],
                   position_embedding_type="absolute", pad_token_id=0), f)
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = [f"w{k}" for k in range(arch["vocab_size"] - len(specials))]
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(specials + words) + "\n")
  return str(path)


def write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_fashion_idx(manual) -> None:
  """A tiny Fashion-MNIST manual dir (30 train, 20 test images; label i % 10) in `manual`."""
  rng = np.random.default_rng(0)
  manual.mkdir()
  for prefix, n in (("train", 30), ("t10k", 20)):
    write_idx(manual / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx(manual / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
