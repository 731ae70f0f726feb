"""Random invalid values for every config key: one line, exit 2, the workdir untouched.

Every key of `base_config()` is either fuzzed here or listed in NOT_READ with why the
synthetic run does not read it (so a new key must be classified). Each draw runs the
command line in-process (tests/helpers.run_cli: absl's parsing, `main`, the error printing)
on a copy of a finished run, which must come out byte-identical. The draws are seeded:
MERLIN_FUZZ_SEED=<n> draws another set; MERLIN_PRINT_TABLE=1 prints every case.
"""

import math
import os
import random
import shutil

import pytest

from merlin_jax import keys
from merlin_jax.runtime import workdir as workdir_lib
from merlin_jax.config_base import base_config
from merlin_jax.methods import METHODS, declared, get_method
from tests.helpers import assert_one_line_error, run_cli, snapshot

SEED = int(os.environ.get("MERLIN_FUZZ_SEED", "0"))
# Keys the synthetic image run (configs/synthetic.py) does not read: a value there is not an
# input of this run (checked where they are read: data/image.py, data/text.py, models/bert.py).
NOT_READ = {
    "data.data_dir": "synthetic data reads no files",
    "data.source.split": "synthetic data has no splits",
    "data.source.eval_split": "synthetic data has no splits",
    "data.source.in_memory": "synthetic data is in memory",
    "data.source.exclude_target": "synthetic data: source and target differ",
    "data.source.signature.enabled": "a bool: every value is valid",
    "data.target.train_split": "synthetic data has no splits",
    "data.target.test_split": "synthetic data has no splits",
    "data.text.tokenizer_dir": "text data only",
    "data.text.fields": "text data only",
    "model.hf_dir": "bert only",
    "model.batch_norm": "a bool: every value is valid",
    "model.small_inputs": "a bool: every value is valid",
    "model.remat": "a bool: every value is valid",
    "inner.first_order": "a bool: every value is valid",
    "inner.remat": "a bool: every value is valid",
    "pretrained.path": "fuzzed by test_cli (missing / corrupt weights files)",
    "data.source.image_key": "synthetic data has no TFDS features",
    "data.source.label_key": "synthetic data has no TFDS features",
    "data.target.image_key": "synthetic data has no TFDS features",
    "data.target.label_key": "synthetic data has no TFDS features",
}
NAMES = ("method", "model.name", "inner.kind", "inner.step_size", "inner.init",
         "data.source.name", "data.target.name")


def _garbage(rng):
  return "".join(rng.choice("abcxyz_0") for _ in range(rng.randint(1, 8))) + "zz"


def _invalid(key, default, rng):
  """A few values of `key` that no run may accept."""
  decl = keys.BY_NAME.get(key)
  if decl is not None and decl.choices is not None:
    return [99 if decl.kind == "int" else _garbage(rng)]
  if decl is not None and decl.kind in ("int", "float") and (decl.low, decl.high) != (None,
                                                                                       None):
    out = []
    if decl.low is not None:
      out.append(decl.low if decl.strict else
                 (decl.low - 1 if decl.kind == "int" else decl.low - 0.5))
    if decl.high is not None:
      out.append(decl.high)
    out += [2**64, -2**64] if decl.kind == "int" else [math.nan, math.inf, -math.inf]
    return out
  if key in NAMES:
    return [_garbage(rng)]
  if key == "model.conv_widths":
    return [(), (0, 4), (-3,)]
  if isinstance(default, bool):
    return []
  if isinstance(default, float):
    return [math.nan, math.inf]
  if isinstance(default, int):
    return [2**64, -2**64]
  return [_garbage(rng)]


def _cases():
  rng = random.Random(SEED)
  flat = workdir_lib.flat_config(base_config())
  hparams = {h.key for h in declared().values()}
  cases = []
  for key, default in sorted(flat.items()):
    if key in NOT_READ:
      continue
    flags = []
    if key in hparams:   # read by the methods that declare it: fuzz it under one of them
      owner = next(m for m in ("merlin", "joint", "l2sp", "target_only", *sorted(METHODS))
                   if _declares(m, key))
      flags.append(f"--config.method={owner}")
      if get_method(owner).needs_pretrained:
        flags.append("--config.pretrained.steps=1")
    values = _invalid(key, default, rng)
    for value in rng.sample(values, min(2, len(values))):
      cases.append((key, value, flags))
  return cases


def _declares(method, key):
  try:
    return any(h.key == key for h in get_method(method).hyperparameters)
  except Exception:  # noqa: BLE001 - a method not in this checkout
    return False


def _flag(key, value):
  if isinstance(value, tuple):
    return f"--config.{key}=({','.join(map(str, value))}{',' if len(value) == 1 else ''})"
  return f"--config.{key}={value}"


def test_every_key_is_fuzzed_or_not_read():
  flat = set(workdir_lib.flat_config(base_config()))
  assert set(NOT_READ) <= flat
  fuzzed = {k for k, _, _ in _cases()}
  assert fuzzed | set(NOT_READ) | {k for k, v in workdir_lib.flat_config(base_config()).items()
                                   if isinstance(v, bool)} == flat




def test_random_invalid_values_are_one_line_and_harm_nothing(tmp_path, finished, capfd,
                                                             monkeypatch):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  copy = tmp_path / "run"
  shutil.copytree(finished, copy)
  before = snapshot(copy)
  failures = []
  for i, (key, value, flags) in enumerate(_cases()):
    args = flags + [_flag(key, value)]
    fresh = tmp_path / f"fresh{i}"
    try:
      # A new workdir: the value itself must be refused (and nothing left behind)...
      code, err = run_cli(args, capfd, workdir=fresh)
      message = assert_one_line_error(code, err)
      assert not fresh.exists() or not os.listdir(fresh), "files left in a new workdir"
      # ...and a finished run's workdir must come out byte-identical.
      code, err = run_cli(args, capfd, workdir=copy)
      assert_one_line_error(code, err)
      assert snapshot(copy) == before, "the workdir changed"
    except Exception as e:  # noqa: BLE001 - an assertion, or an exception that escaped main
      failures.append(f"{' '.join(args)}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
      shutil.rmtree(copy)
      shutil.copytree(finished, copy)
      continue
    if os.environ.get("MERLIN_PRINT_TABLE"):
      with capfd.disabled():
        print(f"FUZZ|{' '.join(args)}|{message}", flush=True)
  assert not failures, f"seed {SEED}:\n" + "\n".join(failures)
