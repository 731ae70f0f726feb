"""Scaling out on this CPU: the same MeRLin run on 1, 2 and 4 (fake) devices, with parameters
replicated and FSDP-sharded, two processes joined by jax.distributed (gloo), and a checkpoint
written on 2 devices restored on 1 and 4.

Each device count is one subprocess (XLA's device count is fixed at start-up) that runs
several tiny `train_and_evaluate` calls; the subprocesses share a persistent compilation
cache. The whole module takes about 2-3 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from merlin_jax.runtime.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 5e-4     # reduction order differs between meshes (notes/JAX_CPU.md): not bitwise
STEPS = 6
PREEMPT = {"total_steps": 40, "eval.every": 40, "checkpoint_every": 40, "log_every": 10}
BASE = {"total_steps": STEPS, "eval.every": 3, "checkpoint_every": 3, "batch_size": 16,
        "optimizer.lr": 3e-2, "inner.lr": 0.5,   # learns in 3 steps: step 3 gets selected
        "mesh.fsdp_min_size": 32}   # tiny model: shard every leaf with >= 32 elements

# One subprocess: optionally join a distributed run, then do the listed runs in order.
_SCRIPT = textwrap.dedent("""
    import json, os, shutil, signal, sys, time
    sys.path.insert(0, {root!r})
    spec = json.loads({spec!r})
    import jax
    jax.config.update("jax_compilation_cache_dir", spec["cache"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from merlin_jax.runtime import distributed
    if spec.get("process_id") is not None:
      distributed.initialize(distributed.Settings(
          mode="on", coordinator_address=spec["coordinator"], num_processes=spec["num_processes"],
          process_id=spec["process_id"], timeout_s=120))
    from merlin_jax.data import pipeline
    from merlin_jax.data.synthetic import load_synthetic
    from tests.helpers import tiny_config
    pipeline.load_transfer_data = load_synthetic
    from merlin_jax import train
    from merlin_jax.errors import Preempted
    make_train_step = train.make_train_step

    def sigterm_at(at):  # process 1 gets SIGTERM after step `at`; later steps are slow
      def make(*args, **kwargs):
        step = make_train_step(*args, **kwargs)
        def wrapped(state, *rest):
          out = step(state, *rest)
          if int(out[0].step) == at and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
          if int(out[0].step) >= at:
            time.sleep(0.2)   # JAX's preemption sync takes a few steps to agree
          return out
        return wrapped
      return make

    for run in spec["runs"]:
      if run.get("copy_from") and jax.process_index() == 0:
        shutil.copytree(run["copy_from"], run["workdir"], dirs_exist_ok=True)
      if run.get("snapshot_to") is None:
        cfg = tiny_config("merlin", **run["overrides"])
        train.make_train_step = (sigterm_at(run["sigterm_at"]) if "sigterm_at" in run
                                 else make_train_step)
        try:
          train.train_and_evaluate(cfg, run["workdir"])
        except Preempted as e:
          with open(os.path.join(run["workdir"], "preempted.%d" % jax.process_index()), "w") as f:
            f.write(str(e.step))
      elif jax.process_index() == 0:
        shutil.copytree(run["workdir"], run["snapshot_to"])
    print("DEVICES", jax.device_count(), "PROCESSES", jax.process_count())
""")


def _command(spec):
  return [sys.executable, "-c", _SCRIPT.format(root=ROOT, spec=json.dumps(spec))]


def _env(devices_per_process):
  return dict(os.environ, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(devices, runs, cache, processes=1):
  """Starts one subprocess with `devices` fake CPU devices, or `processes` of them with one
  device each joined by jax.distributed (a free port, gloo). Output goes to files (no pipe
  fills up while another process is waited on). Returns (expected stdout, [(popen, log)])."""
  if processes == 1:
    specs = [{"runs": runs, "cache": cache}]
  else:
    coordinator = f"127.0.0.1:{_free_port()}"
    specs = [{"runs": runs, "cache": cache, "coordinator": coordinator,
              "num_processes": processes, "process_id": i} for i in range(processes)]
  procs = []
  for spec in specs:
    log = tempfile.TemporaryFile("w+")
    procs.append((subprocess.Popen(_command(spec), env=_env(devices if processes == 1 else 1),
                                   stdout=log, stderr=subprocess.STDOUT, text=True), log))
  expected = f"DEVICES {devices if processes == 1 else processes} PROCESSES {processes}"
  return expected, procs


def _wait(*started, timeout=400):
  """Waits for everything `_start` started (running side by side); kills all on failure."""
  everything = [p for _, procs in started for p, _ in procs]
  try:
    for expected, procs in started:
      for p, log in procs:
        p.wait(timeout=timeout)
        log.seek(0)
        output = log.read()
        assert p.returncode == 0, output[-4000:]
        assert expected in output
  finally:
    for p in everything:
      if p.poll() is None:
        p.kill()
        p.wait()


def _run_spec(workdir, **overrides):
  return {"workdir": str(workdir), "overrides": dict(BASE, **overrides)}


def _records(workdir):
  return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _losses(workdir):
  by_step = {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r}
  return [by_step[s] for s in sorted(by_step)]


def _evals(workdir):
  """{step: target_val_loss} of the periodic evaluations (last record per step wins)."""
  return {r["step"]: r["target_val_loss"] for r in _records(workdir) if "target_val_loss" in r}


def _final(workdir):
  return [r for r in _records(workdir) if r.get("final")][-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs everything once; the tests below compare the results."""
  d = tmp_path_factory.mktemp("scale")
  cache = str(d / "jax_cache")
  # 2 devices: a replicated run interrupted at step 3 (snapshot kept) and resumed to 6,
  # and an FSDP run. Beside it: 2 processes x 1 device (jax.distributed, gloo), FSDP across
  # the processes, 3 steps, checkpoint, then a resume to 6 in the same processes; then a
  # run whose process 1 gets SIGTERM (JAX's preemption sync point), resumed to its end.
  _wait(_start(2, [_run_spec(d / "rep2", total_steps=3),
                   {"workdir": str(d / "rep2"), "snapshot_to": str(d / "ckpt2")},
                   _run_spec(d / "rep2"),
                   _run_spec(d / "fsdp2", **{"mesh.param_sharding": "fsdp"})], cache),
        _start(2, [_run_spec(d / "dist", total_steps=3, **{"mesh.param_sharding": "fsdp"}),
                   _run_spec(d / "dist", **{"mesh.param_sharding": "fsdp"}),
                   dict(_run_spec(d / "sigterm", **PREEMPT), sigterm_at=2),
                   _run_spec(d / "sigterm", **PREEMPT)], cache, processes=2))
  # 1 and 4 devices (side by side): the same runs, and the 2-device step-3 checkpoint
  # restored: evaluated as is (total_steps=3: final evaluation of the restored model), and
  # trained on to 6.
  restore = lambda name, **kw: [  # noqa: E731
      dict(_run_spec(d / f"{name}_eval", total_steps=3, **kw), copy_from=str(d / "ckpt2")),
      dict(_run_spec(d / name, **kw), copy_from=str(d / "ckpt2"))]
  _wait(_start(1, [_run_spec(d / "rep1")] + restore("restore1"), cache),
        _start(4, [_run_spec(d / "rep4"),
                   _run_spec(d / "fsdp4", **{"mesh.param_sharding": "fsdp"}),
                   _run_spec(d / "model4", **{"mesh.model": 2, "mesh.param_sharding": "fsdp"})]
               + restore("restore4", **{"mesh.param_sharding": "fsdp"}), cache))
  return d


@pytest.mark.parametrize("name", ["rep2", "fsdp2", "rep4", "fsdp4", "model4"])
def test_same_losses_on_1_2_4_devices_replicated_and_fsdp(runs, name):
  reference = _losses(runs / "rep1")
  assert len(reference) == STEPS and np.all(np.isfinite(reference))
  np.testing.assert_allclose(_losses(runs / name), reference, rtol=RTOL)
  ref_evals, evals = _evals(runs / "rep1"), _evals(runs / name)
  assert sorted(evals) == sorted(ref_evals) == [0, 3, 6]
  np.testing.assert_allclose([evals[s] for s in sorted(evals)],
                             [ref_evals[s] for s in sorted(ref_evals)], rtol=RTOL)
  assert _final(runs / name)["target_test_accuracy"] == pytest.approx(
      _final(runs / "rep1")["target_test_accuracy"], abs=1e-6)


def test_two_processes_with_jax_distributed_match_single_process(runs):
  # Steps 1-3, a checkpoint, a resume and steps 4-6 over two processes == one process.
  np.testing.assert_allclose(_losses(runs / "dist"), _losses(runs / "rep1"), rtol=RTOL)
  assert sorted(int(s) for s in os.listdir(runs / "dist" / "checkpoints") if s.isdigit()) == [3, 6]
  assert (runs / "dist" / "model.safetensors").exists()   # FSDP leaves gathered for export
  assert _final(runs / "dist")["target_test_accuracy"] == pytest.approx(
      _final(runs / "rep1")["target_test_accuracy"], abs=1e-6)


def test_sigterm_to_one_process_stops_both_at_one_step_with_a_checkpoint(runs):
  """JAX's preemption service owns SIGTERM with several processes: the processes agree on
  a step (not a log_every boundary), both save it and stop; the rerun finishes the run."""
  stops = [int((runs / "sigterm" / f"preempted.{i}").read_text()) for i in (0, 1)]
  assert stops[0] == stops[1] and 2 <= stops[0] < PREEMPT["total_steps"]
  steps = sorted(int(s) for s in os.listdir(runs / "sigterm" / "checkpoints") if s.isdigit())
  assert steps == [stops[0], PREEMPT["total_steps"]]
  assert np.isfinite(_final(runs / "sigterm")["target_test_accuracy"])


@pytest.mark.parametrize("name", ["restore1", "restore4"])
def test_checkpoint_from_2_devices_restores_on_1_and_4(runs, name):
  saved = _final(runs / "ckpt2")
  # Resumed with total_steps=3: no training, the final evaluation of the restored model.
  assert saved["selected_step"] == 3   # a trained model, not the initial one
  restored = _final(runs / f"{name}_eval")
  assert restored is not saved and _records(runs / f"{name}_eval").count(saved) == 0
  for key in ("target_test_accuracy", "best_target_val_accuracy", "selected_step"):
    assert restored[key] == pytest.approx(saved[key], abs=1e-6), key
  # Training on from the restored state (params + Adam moments) gives the same losses.
  np.testing.assert_allclose(_losses(runs / name), _losses(runs / "rep2"), rtol=RTOL)
  np.testing.assert_allclose(_evals(runs / name)[6], _evals(runs / "rep2")[6], rtol=RTOL)


# --- placement rules (no devices needed) ------------------------------------------------


class _Mesh:
  def __init__(self, data, model=1):
    self.shape = {"data": data, "model": model}


@pytest.mark.parametrize("shape, mesh, mode, spec", [
    ((3, 3, 64, 128), _Mesh(8), "fsdp", (None, None, None, "data")),     # largest divisible
    ((30522, 384), _Mesh(4), "fsdp", (None, "data")),                   # 30522 % 4 != 0
    ((64, 64), _Mesh(4), "fsdp", ("data", None)),                       # ties: first axis
    ((7, 9, 11), _Mesh(2), "fsdp", ()),                                 # indivisible: replicated
    ((128,), _Mesh(4), "fsdp", ()),                                     # small: replicated
    ((), _Mesh(4), "fsdp", ()),                                         # scalars (step, count)
    ((3, 3, 64, 128), _Mesh(8), "replicated", ()),
    ((256, 512), _Mesh(2, 2), "replicated", (None, "model")),           # 'model' always splits
    ((256, 512), _Mesh(2, 2), "fsdp", ("model", "data")),               # data first: 512
])
def test_param_spec(shape, mesh, mode, spec):
  from jax.sharding import PartitionSpec as P
  from merlin_jax.runtime import sharding
  assert sharding.param_spec(shape, mesh, mode, min_size=1024) == P(*spec)


def test_param_spec_rejects_unknown_mode():
  from merlin_jax.runtime import sharding
  from merlin_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="mesh.param_sharding"):
    sharding.param_spec((8, 8), _Mesh(2), "zero3")


def test_device_grid_keeps_model_groups_inside_a_slice_and_data_across_slices():
  """Multislice: 'data' spans the slices, every 'model' group lies inside one slice (and
  on CPU, one slice, the grid is jax.devices() in order, as before)."""
  import dataclasses
  from merlin_jax.runtime import sharding
  from merlin_jax.errors import ConfigError

  @dataclasses.dataclass(frozen=True)
  class FakeDevice:
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"

  devices = [FakeDevice(i, slice_index=i // 4, process_index=i // 2) for i in range(8)]
  grid = sharding.device_grid(devices, 4, 2)
  assert grid.shape == (4, 2)
  assert all(len({d.slice_index for d in row}) == 1 for row in grid)      # model: one slice
  assert {d.slice_index for d in grid[:, 0]} == {0, 1}                    # data: both
  assert sorted(d.id for d in grid.flat) == list(range(8))
  with pytest.raises(ConfigError, match="slices"):
    sharding.device_grid(devices[:6] + [FakeDevice(8, 2), FakeDevice(9, 2)], 8, 1)
  one_slice = [FakeDevice(i, slice_index=0) for i in range(4)]
  assert [d.id for d in sharding.device_grid(one_slice, 2, 2).flat] == [0, 1, 2, 3]
