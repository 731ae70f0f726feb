"""The compile-only check (merlin_jax/compile_check.py): a `:local` config compiled by the
real TPU compiler (libtpu, no TPU attached) through `python -m merlin_jax.main
--compile_only`, its report, the exit status and one line when it does not fit or libtpu is
missing; bench/accelerator.py --smoke on this CPU.

libtpu comes with the `tpu` extra (.ci/run installs it); without it the two TPU compiles
are skipped, the rest runs.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from merlin_jax import compile_check
from tests.helpers import assert_one_line_error, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits.py")
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install '.[tpu]')")


def compile_only(*args, timeout=300):
  """`python -m merlin_jax.main --compile_only ...` in a fresh process -> (rc, out, err)."""
  env = dict(os.environ, PYTHONPATH=ROOT, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  env.pop("JAX_PLATFORMS", None)
  p = subprocess.run([sys.executable, "-m", "merlin_jax.main", *args], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stdout, p.stderr


def size(text: str) -> float:
  """'12.3 MiB' / '1.69 GiB' -> bytes."""
  value, unit = text.split()
  return float(value) * {"MiB": 2**20, "GiB": 2**30}[unit]


@needs_libtpu
def test_local_config_compiles_for_a_tpu_chip_and_fits():
  # digits:local in bfloat16: SmallCNN convolutions, a 1-chip v5e mesh. A source batch of
  # 72 (+ the target split) would be convolved in slices on this CPU host
  # (model.conv_batch_chunk auto): for the TPU it must be the TPU's choice, whole batches.
  rc, out, err = compile_only(f"--config={DIGITS}:local", "--config.model.dtype=bfloat16",
                              "--config.batch_size=72", "--compile_only=v5e:1")
  assert rc == 0, err[-3000:]
  assert "TPU v5 lite" in out and "1x1 ('data', 'model') mesh" in out, out
  progs = {m.group(1): m for m in re.finditer(
      r"^  (train_step|probe|eval_batch)\s+([\d.]+ .iB) per device \(program ([\d.]+ .iB)"
      r".*?([\d.]+) TFLOP  convolutions: (.*?)  compiled", out, re.M)}
  assert set(progs) == {"train_step", "probe", "eval_batch"}, out
  for name, m in progs.items():
    assert 0 < size(m.group(3)) <= size(m.group(2)) < 2**30, m.group(0)
    # The bf16 program keeps every spatial convolution in bf16 on the TPU compiler.
    convs = dict(c.split() for c in m.group(5).split(", "))
    assert set(convs) == {"bf16"} and int(convs["bf16"]) >= 2, m.group(0)
  # 2 forward, 2 kernel gradients, 1 input gradient: one of each per layer, not per slice.
  assert int(dict(c.split() for c in progs["train_step"].group(5).split(", "))["bf16"]) == 5
  assert int(dict(c.split() for c in progs["eval_batch"].group(5).split(", "))["bf16"]) < 5
  assert "197 TFLOP/s bf16" in out and "cloud.google.com/tpu/docs/v5e" in out, out
  bound = float(re.search(r"train step >= ([\d.]+) ms at peak", out).group(1))
  assert bound > 0
  assert re.search(r"FITS: peak [\d.]+ GiB of 14.90 GiB per chip", out), out


@needs_libtpu
def test_too_big_a_batch_does_not_fit_exit_2_naming_the_fix():
  # 65536 source images of 28x28 at 1 chip: activations alone exceed the 16 GB of a v5e.
  rc, out, err = compile_only(f"--config={DIGITS}:local", "--config.batch_size=65536",
                              "--compile_only=v5e:1")
  line = assert_one_line_error(rc, err, "train_step needs")
  assert "of the 14.90 GiB of a TPU v5e chip" in line
  assert "--config.batch_size (now 65536)" in line and "more chips" in line
  assert "DOES NOT FIT" in out and "stopped after train_step" in out   # no more compiles


def test_without_libtpu_one_line_names_the_extra(capfd, monkeypatch):
  monkeypatch.setattr(compile_check, "libtpu_version", lambda: None)
  code, err = run_cli(["--compile_only=v5e:2x4"], capfd, config=DIGITS + ":local")
  line = assert_one_line_error(code, err, "pip install 'merlin_jax[tpu]'")
  assert "libtpu" in line


@pytest.mark.parametrize("spec,fragment", [("v9:2x2", "GENERATION:TOPOLOGY"),
                                           ("v5e:two", "GENERATION:TOPOLOGY"),
                                           ("cpu:0", "cpu:N")])
def test_bad_target_one_line(capfd, spec, fragment):
  code, err = run_cli([f"--compile_only={spec}"], capfd, config=DIGITS + ":local")
  assert_one_line_error(code, err, fragment)


def test_targets_and_chip_figures():
  t = compile_check.parse_target("v5e:1")
  assert (t.platform, t.topology, t.num_devices) == ("tpu", "v5e:2x2", 1)
  t = compile_check.parse_target("v4:2x2x1")
  assert (t.topology, t.num_devices, t.chip.peak_bf16_flops) == ("v4:2x2x1", None, 275e12)
  assert compile_check.parse_target("cpu:8").num_devices == 8
  for gen, chip in compile_check.CHIPS.items():
    assert chip.source.startswith(f"https://cloud.google.com/tpu/docs/{gen}:")
    assert chip.hbm_bytes >= 16 * 10**9 and chip.peak_bf16_flops >= 197e12


def test_fake_cpu_devices_report():
  # This process's CPU devices: the same builder on XLA:CPU (no chip figures to fit).
  import jax
  from merlin_jax.config_base import load_config
  n = len(jax.devices("cpu"))
  r = compile_check.check(load_config(DIGITS + ":local"), f"cpu:{n}", programs=("train_step",))
  d = r.to_dict()
  assert d["fits"] is None and d["hbm_bytes"] is None and d["chip"] is None   # no HBM figure
  assert d["step_flops"] > 0 and d["step_time_lower_bound_s"] is None
  step = d["programs"]["train_step"]
  assert step["total"] == step["args"] + step["out"] - step["alias"] + step["temp"] > 0
  assert step["peak"] == step["total"] + step["resident"] and step["resident"] > 0
  # SmallCNN's 2 convolutions forward, 2 weight gradients, 1 input gradient (the first
  # layer's input needs none): float32 on CPU. On a CPU mesh the source rows and the target
  # rows go through the backbone in two passes (Context.pass_per_part), each by default in
  # slices of <= 64 images, 5 convolutions each; whole batches: 5 per pass.
  assert step["convs"]["f32"] % 5 == 0 and step["convs"]["f32"] > 10, step["convs"]
  assert d["mesh"] == {"data": n, "model": 1}
  whole = compile_check.check(load_config(DIGITS + ":local"), f"cpu:{n}",
                              programs=("train_step",),
                              overrides={"model.conv_batch_chunk": 0}).to_dict()
  assert whole["programs"]["train_step"]["convs"] == {"f32": 2 * 5}
  # Only the eval program (bench/memory.py --programs=probe,eval_batch): no step figures.
  ev = compile_check.check(load_config(DIGITS + ":local"), f"cpu:{n}",
                           programs=("eval_batch",))
  assert ev.to_dict()["step_flops"] is None and any("eval_batch" in l for l in ev.lines())


def test_accelerator_bench_smoke_runs_on_cpu(tmp_path):
  out = tmp_path / "acc.json"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "bench/accelerator.py", "--smoke", "--sizes=5",
                      f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  import json
  res = json.loads(out.read_text())["results"]
  assert [r["name"] for r in res] == ["joint", "merlin_n5"]
  for r in res:
    assert r["step_ms"] > 0 and r["flops_per_device"] > 0 and r["predicted_gib"] > 0
    assert r["mfu"] is None and r["peak_gib"] is None   # CPU: no peak figure, no memory stats
    assert r["loss"] == r["loss"]                       # finite steps ran
  assert "| merlin_n5 |" in p.stdout


def _on_four_cpu_devices(code: str) -> dict:
  """Runs `code` in a child with 4 fake CPU devices; the JSON it prints after 'RESULT '."""
  import json
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.split("RESULT ", 1)[1])


_FSDP_CHILD = """
import json
from merlin_jax import compile_check
from merlin_jax.config_base import load_config
out = {}
for mode in ("replicated", "fsdp"):
  r = compile_check.check(load_config("configs/digits.py:local"), "cpu:4",
                          programs=("train_step",), overrides={
                              "mesh.param_sharding": mode, "mesh.fsdp_min_size": 1,
                              "batch_size": 512})
  p = r.programs["train_step"]
  out[mode] = {"args": p.args, "temp": p.temp, "total": p.total}
print("RESULT " + json.dumps(out))
"""


def test_fsdp_step_needs_fewer_bytes_than_replicated_on_four_devices():
  # Without the train step's gather/scatter constraints (sharding.gathered) XLA kept full
  # copies as temporaries: 90.4 MB with FSDP against 62.7 MB replicated here (XLA:CPU, 4
  # fake devices); with them 55.4 MB.
  r = _on_four_cpu_devices(_FSDP_CHILD)
  assert r["fsdp"]["args"] < r["replicated"]["args"] / 2        # the state is split
  assert r["fsdp"]["total"] < r["replicated"]["total"], r       # and not gathered for good
  assert r["fsdp"]["temp"] < 1.1 * r["replicated"]["temp"], r


_ROWS_CHILD = """
import json
from merlin_jax import compile_check
from merlin_jax.config_base import load_config
out = {}
for method in ("finetune", "merlin"):
  for n in (4, 1):   # 4 first: a first cpu:1 would fix the process at one device
    r = compile_check.check(load_config("configs/digits.py:local"), f"cpu:{n}",
                            programs=("train_step",), method_name=method, overrides={
                                "target_batch_size": 64, "batch_size": 64,
                                "split.train_size": 32, "split.val_size": 32})
    out[f"{method}/{n}"] = r.programs["train_step"].flops
print("RESULT " + json.dumps(out))
"""


def test_target_rows_are_data_parallel_on_four_devices():
  # Rows taken from the replicated target pool (the fine-tuning minibatch, MeRLin's split)
  # were computed whole on every device: the same FLOPs per device on 4 devices as on 1
  # (BERT-base GLUE at v5e:2x4: 2.19 TFLOP per device, as on one chip). Context.rows.
  r = _on_four_cpu_devices(_ROWS_CHILD)
  for method in ("finetune", "merlin"):
    assert r[f"{method}/4"] < 0.4 * r[f"{method}/1"], r


def test_gathered_drops_only_the_data_axis():
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  import jax
  from merlin_jax.runtime import sharding
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  tree = {"a": NamedSharding(mesh, P(None, "data")), "b": NamedSharding(mesh, P("model", "data")),
          "c": NamedSharding(mesh, P())}
  g = sharding.gathered(tree)
  assert (g["a"].spec, g["b"].spec, g["c"].spec) == (P(None, None), P("model", None), P())
  assert sharding.gathered({"b": NamedSharding(mesh, P("model")), "c": tree["c"]}) is None


@needs_libtpu
def test_topologies_give_one_device_per_chip():
  # v4 / v5p describe two TensorCores per chip unless asked for megacore; the mesh helpers
  # (mesh_utils) need one device per chip, as JAX has on the hardware.
  code = ("from merlin_jax import compile_check as c\n"
          "for t in ('v4:2x2x1', 'v5p:2x2x1', 'v5e:2x4', 'v6e:2x2', 'v5e:4x4', 'v5e:1'):\n"
          "  d = c.target_devices(c.parse_target(t))\n"
          "  print('ROW', t, len(d), len({x.process_index for x in d}), d[0].device_kind)\n")
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("JAX_PLATFORMS", None)
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  rows = {l.split()[1]: l.split(None, 4)[2:] for l in p.stdout.splitlines()
          if l.startswith("ROW")}
  assert rows["v4:2x2x1"] == ["4", "1", "TPU v4"], rows
  assert rows["v5p:2x2x1"][:2] == ["4", "1"] and rows["v5e:2x4"][0] == "8", rows
  assert rows["v6e:2x2"][0] == "4" and rows["v5e:1"][0] == "1", rows
  assert rows["v5e:4x4"][:2] == ["16", "4"], rows          # hosts of libtpu's 2x2 chips
