r"""Will it fit? Compile a config for an accelerator that is not attached.

  python -m merlin_jax.main --config=configs/food_cub.py --compile_only=v5e:2x4

`check(config, target)` builds the programs a run compiles -- the train step
(`train.make_train_step` over `sharding.state_shardings`), the probe fit and one eval batch
(`evaluate.Evaluator`) -- on abstract arguments (`jax.ShapeDtypeStruct`s carrying the
`NamedSharding` a run gives them: nothing is allocated, no data or weights are read),
compiles them ahead of time for the devices of `target` (`jit(...).lower(...).compile()`,
as MaxText's train_compile.py does) and reads what the compiler decided: bytes per device
(`memory_analysis`), FLOPs per device (`cost_analysis`) and the dtypes of the compiled
convolutions.

target:
  'v5e:2x4', 'v4:2x2x1', 'v5p:2x2x1', 'v6e:2x2', 'v5e:4x4' (4 hosts), ...: a TPU slice,
      compiled by libtpu with no TPU attached (`jax.experimental.topologies`; needs the
      `tpu` extra: `pip install 'merlin_jax[tpu]'`);
  'v5e:1' (v4:1, v5p:1, v6e:1): one chip = a 1-device mesh over the first device of the
      generation's smallest slice (libtpu has no 1-chip topology);
  'cpu:8': 8 CPU devices of this host (XLA:CPU; set before JAX starts its CPU backend);
  'local': the devices this process has (a lent GPU/TPU host: bench/accelerator.py).
config.mesh applies as in a run (mesh.data=-1: every device of the target).

What "fits" means here: for each program, its own bytes (arguments + outputs - donated
aliases + temporaries) plus the run's other buffers alive while it runs (the train state,
the copy of the selected model, the target pool, the anchor: whatever is not already among
its arguments) must not exceed the chip's HBM. The step-time bound is FLOPs per device over
the chip's peak bf16 FLOP/s; XLA's cost analysis counts a loop body once (a 10-step scan
reports the FLOPs of one step; checked with libtpu 0.0.42.1), so with MeRLin's inner loop
the FLOPs, and the bound, are lower bounds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from merlin_jax.errors import ConfigError, UserError

GiB = 2**30
INSTALL_HINT = ("the TPU compiler (libtpu) is not installed: pip install 'merlin_jax[tpu]' "
                "(or pip install 'jax[tpu]=={jax}')")


@dataclasses.dataclass(frozen=True)
class Chip:
  """One chip's published figures (Google Cloud TPU documentation, checked 2026-12-04)."""
  name: str
  hbm_bytes: int
  peak_bf16_flops: float     # per chip
  source: str


# The published figures, per chip (a v4/v5p chip's two TensorCores are one JAX device).
# HBM in the unit each page states (GiB for v4; GB = 1e9 bytes for v5e, v5p, v6e: the
# conservative reading).
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12,
               "https://cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 per chip"),
    "v5e": Chip("TPU v5e", 16 * 10**9, 197e12,
                "https://cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 per chip"),
    "v5p": Chip("TPU v5p", 95 * 10**9, 459e12,
                "https://cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e per chip"),
    "v6e": Chip("TPU v6e", 32 * 10**9, 918e12,
                "https://cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM per chip"),
}
# GPUs, for bench/accelerator.py's MFU on a lent machine (dense bf16: the datasheets' figure
# "with sparsity" halved). HBM: the device's own bytes_limit when it reports one.
GPUS = {
    "H200": Chip("NVIDIA H200", 141 * 10**9, 989.5e12, "NVIDIA H200 Tensor Core GPU "
                 "datasheet: BF16 1,979 TFLOPS with sparsity (989.5 dense), 141 GB HBM3e"),
    "H100": Chip("NVIDIA H100 SXM", 80 * 10**9, 989.5e12, "NVIDIA H100 Tensor Core GPU "
                 "datasheet (SXM): BF16 1,979 TFLOPS with sparsity (989.5 dense), 80 GB"),
    "A100": Chip("NVIDIA A100", 80 * 10**9, 312e12, "NVIDIA A100 Tensor Core GPU datasheet: "
                 "BF16 312 TFLOPS dense, 40 or 80 GB"),
}
_TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
              "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


def chip_for_device(device) -> Chip | None:
  """The published figures of a device's chip (a real device or a topology description)."""
  kind = device.device_kind
  if kind in _TPU_KINDS:
    return CHIPS[_TPU_KINDS[kind]]
  for name, chip in GPUS.items():
    if name in kind:
      try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
      except Exception:  # noqa: BLE001 - not addressable / not supported
        limit = None
      return dataclasses.replace(chip, hbm_bytes=int(limit)) if limit else chip
  return None


# The smallest slice libtpu describes per generation: its first device stands for one chip.
SMALLEST = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


# ---------------------------------------------------------------------------------------
# Targets: the devices to compile for.


@dataclasses.dataclass(frozen=True)
class Target:
  spec: str                  # as given, e.g. 'v5e:2x4'
  platform: str              # 'tpu' | 'cpu'
  topology: str              # what libtpu is asked for ('' for cpu)
  num_devices: int | None    # None: all of the topology; 1 for 'v5e:1'
  chip: Chip | None


def parse_target(spec: str) -> Target:
  """'v5e:2x4' | 'v5e:1' | 'cpu:8' -> Target; a UserError names the accepted forms."""
  gen, _, shape = spec.strip().lower().partition(":")
  forms = ("give GENERATION:TOPOLOGY (v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x2, v5e:4x4), "
           "GENERATION:1 for one chip, or cpu:N")
  if gen == "local" and not shape:
    return Target(spec, "local", "", None, None)
  if gen == "cpu":
    if not shape.isdigit() or int(shape) < 1:
      raise UserError(f"--compile_only={spec}: {forms}")
    return Target(spec, "cpu", "", int(shape), None)
  if gen not in CHIPS or not re.fullmatch(r"\d+(x\d+)*", shape):
    raise UserError(f"--compile_only={spec}: {forms}")
  if shape in ("1", "1x1", "1x1x1"):
    return Target(spec, "tpu", SMALLEST[gen], 1, CHIPS[gen])
  return Target(spec, "tpu", f"{gen}:{shape}", None, CHIPS[gen])


def libtpu_version() -> str | None:
  if importlib.util.find_spec("libtpu") is None:
    return None
  try:
    from importlib import metadata
    return metadata.version("libtpu")
  except Exception:  # noqa: BLE001 - a libtpu without metadata still compiles
    return "unknown"


def target_devices(target: Target) -> list:
  """The devices to build the mesh over (descriptions only for a TPU: nothing runs)."""
  if target.platform == "local":
    return jax.devices()
  if target.platform == "cpu":
    n = target.num_devices
    try:   # before the CPU backend starts; afterwards the count is fixed
      jax.config.update("jax_num_cpu_devices", n)
    except Exception:  # noqa: BLE001 - already started: use what is there
      pass
    devices = jax.devices("cpu")
    if len(devices) < n:
      raise UserError(f"--compile_only=cpu:{n}: this process has {len(devices)} CPU devices "
                      f"(the count is fixed when JAX starts); run with XLA_FLAGS="
                      f"--xla_force_host_platform_device_count={n}")
    return devices[:n]
  if libtpu_version() is None:
    raise UserError(INSTALL_HINT.format(jax=jax.__version__))
  # Several processes may load libtpu at once on a machine without a TPU (tests, a sweep):
  # its lock file is for processes sharing a real TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    # v4 / v5p chips have two TensorCores: one JAX device per chip ("megacore"), as on
    # the hardware (MaxText's train_compile.py asks for the same).
    megacore = {"chip_config_name": "megacore"} if target.chip in (CHIPS["v4"],
                                                                   CHIPS["v5p"]) else {}
    devices = topologies.get_topology_desc(topology_name=target.topology, platform="tpu",
                                           **megacore).devices
  except Exception as e:  # noqa: BLE001 - libtpu's errors are long; keep the first line
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"--compile_only={target.spec}: libtpu cannot describe topology "
                    f"{target.topology!r} ({first[:200]}); try e.g. v5e:2x2, v5e:2x4, "
                    "v4:2x2x1") from None
  return list(devices)[:target.num_devices] if target.num_devices else list(devices)


# ---------------------------------------------------------------------------------------
# The run's abstract arguments.


def _sds(x, sharding):
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def target_pool_rows(config) -> int:
  n = int(config.data.target.num_train)
  if n > 0:
    return n
  raise ConfigError("data.target.num_train", f"{n} (all of the train split) is known only "
                    "once the data is read; a compile-only check needs the pool's size: give "
                    "it, e.g. --config.data.target.num_train=3268 (GLUE MRPC)")


def abstract_inputs(config, rows: int, sharding):
  """{'inputs', 'label'} of `rows` rows as a run feeds them, abstract.

  Images: float32 pixels for source batches and eval sets; the target pool in uint8 where
  the pipeline keeps it so (ImageNet-style pairs, data/image.py), float32 otherwise
  (`pool=True` callers pass uint8 through `image_dtype`). Text: int32 token arrays."""
  label = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding)
  if config.data.kind == "text":
    from merlin_jax.data.text import TOKEN_KEYS
    length = int(config.data.text.max_length)
    inputs = {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding)
              for k in TOKEN_KEYS}
    return {"inputs": inputs, "label": label}
  size, ch = int(config.data.image_size), int(config.data.channels)
  return {"inputs": jax.ShapeDtypeStruct((rows, size, size, ch), jnp.float32,
                                         sharding=sharding), "label": label}


def pool_image_dtype(config):
  """The dtype the pipeline holds target images in (merlin_jax/data/image.py): uint8 for
  the ImageNet-style pairs (inception augmentation, center-crop eval), float32 for the
  small pairs it resizes (the few stored at the model's size stay uint8: a bound)."""
  return jnp.uint8 if config.data.source.augment == "inception" else jnp.float32


def example_input(config):
  """One row of model input, as `data.example_input` (what the backbone is built from)."""
  if config.data.kind == "text":
    from merlin_jax.data.text import TOKEN_KEYS
    return {k: np.zeros((1, int(config.data.text.max_length)), np.int32) for k in TOKEN_KEYS}
  return (1, int(config.data.image_size), int(config.data.image_size),
          int(config.data.channels))


def _prepare_config(config):
  """A copy that compiles without weights: BERT with no hf_dir gets BERT-base's shapes."""
  config = config.copy_and_resolve_references()
  notes = []
  if config.model.name == "bert" and not config.model.hf_dir and "bert" not in config.model:
    from merlin_jax.models.bert import BertConfig
    import ml_collections
    with config.unlocked():
      config.model.bert = ml_collections.ConfigDict(BertConfig().to_dict())
    notes.append("model.hf_dir unset: BERT-base shapes (12 layers, hidden 768, vocab 30522)")
  return config, notes


# ---------------------------------------------------------------------------------------
# Compile and report.


@dataclasses.dataclass
class Program:
  """What the compiler decided for one program, per device."""
  name: str
  args: int
  out: int
  alias: int
  temp: int
  code: int
  flops: float
  compile_s: float
  resident: int = 0          # the run's other live buffers while this program runs
  convs: dict = dataclasses.field(default_factory=dict)   # output dtype -> count

  @property
  def total(self) -> int:
    """Arguments + outputs - donated aliases + temporaries (bench/memory.py's figure)."""
    return self.args + self.out - self.alias + self.temp

  @property
  def peak(self) -> int:
    return self.total + self.resident


# A spatial convolution of compiled HLO: `= bf16[...]{layout} convolution(...), window={...`.
# The TPU compiler also writes matmuls as `convolution` (no window; the float32 heads and
# inner solve): those are not counted.
_CONV = re.compile(r"=\s*(\w+)\[[^\]]*\]\S*\s+convolution\([^\n]*?window=\{")


def count_convolutions(hlo_text: str) -> dict:
  """{output dtype: count} of the spatial convolutions of compiled HLO text."""
  counts: dict = {}
  for dtype in _CONV.findall(hlo_text):
    counts[dtype] = counts.get(dtype, 0) + 1
  return counts


def analyse(name: str, lowered, resident: int = 0) -> Program:
  """Compiles `lowered` and reads what the compiler decided."""
  t = time.time()
  compiled = lowered.compile()
  return program(name, compiled, time.time() - t, resident)


def program(name: str, compiled, compile_s: float = 0.0, resident: int = 0) -> Program:
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Program(name=name, args=m.argument_size_in_bytes, out=m.output_size_in_bytes,
                 alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
                 code=m.generated_code_size_in_bytes,
                 flops=float((cost or {}).get("flops", float("nan"))), compile_s=compile_s,
                 resident=resident, convs=count_convolutions(compiled.as_text()))


def fmt_bytes(n: int) -> str:
  return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / 2**20:.1f} MiB"


@dataclasses.dataclass
class Report:
  target: str
  device_kind: str
  mesh: dict
  chip: Chip | None
  libtpu: str | None
  programs: dict
  config: Any = dataclasses.field(repr=False, default=None)
  notes: list = dataclasses.field(default_factory=list)

  @property
  def hbm_bytes(self) -> int | None:
    return self.chip.hbm_bytes if self.chip else None

  @property
  def step_flops(self) -> float | None:
    step = self.programs.get("train_step")   # None when only the probe / eval were asked
    return step.flops if step else None

  @property
  def step_time_lower_bound_s(self) -> float | None:
    if not self.chip or self.step_flops is None:
      return None
    return self.step_flops / self.chip.peak_bf16_flops

  @property
  def peak_bytes(self) -> int:
    return max(p.peak for p in self.programs.values())

  @property
  def fits(self) -> bool | None:
    return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes

  def over(self) -> list:
    return [p for p in self.programs.values()
            if self.hbm_bytes is not None and p.peak > self.hbm_bytes]

  def advice(self) -> str:
    """One line: which program does not fit and what to change."""
    c = self.config
    over = self.over()
    worst = max(over, key=lambda p: p.peak)
    need = (f"{worst.name} needs {worst.peak / GiB:.2f} GiB per chip "
            f"(program {worst.total / GiB:.2f} + resident {worst.resident / GiB:.2f}) of the "
            f"{self.hbm_bytes / GiB:.2f} GiB of a {self.chip.name} chip")
    fixes = []
    n = self.mesh.get("data", 1) * self.mesh.get("model", 1)
    if worst.name == "train_step":
      if not c.model.remat and c.model.name in ("resnet18", "resnet50", "bert"):
        fixes.append("--config.model.remat=true")
      if n > 1 and c.mesh.param_sharding != "fsdp":
        fixes.append("--config.mesh.param_sharding=fsdp")
      key = "batch_size" if c.method not in ("finetune", "l2sp", "delta", "bss", "co_tuning") \
          else "target_batch_size"
      fixes.append(f"a smaller --config.{key} (now {c[key]})")
    else:
      fixes.append(f"a smaller --config.eval.batch_size (now {c.eval.batch_size})")
    fixes.append("more chips (a larger topology, mesh.data=-1)")
    return f"{need}: use {', or '.join(fixes)}"

  def lines(self) -> list:
    out = [f"compile-only for {self.target}: {len(self.programs)} programs on a "
           f"{'x'.join(str(v) for v in self.mesh.values())} ('data', 'model') mesh of "
           f"{self.device_kind}" + (f" (libtpu {self.libtpu})" if self.libtpu else "")]
    out += [f"  note: {n}" for n in self.notes]
    for p in self.programs.values():
      convs = ", ".join(f"{k} {v}" for k, v in sorted(p.convs.items())) or "none"
      out.append(f"  {p.name:<11} {fmt_bytes(p.peak)} per device (program "
                 f"{fmt_bytes(p.total)}: args {fmt_bytes(p.args)}, temp {fmt_bytes(p.temp)}; "
                 f"resident {fmt_bytes(p.resident)})  {p.flops / 1e12:.4f} TFLOP  "
                 f"convolutions: {convs}  compiled in {p.compile_s:.0f} s")
    if self.chip:
      out.append(f"  chip: {self.chip.name}, {self.hbm_bytes / GiB:.2f} GiB HBM, "
                 f"{self.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 ({self.chip.source})")
      if self.step_time_lower_bound_s is not None:
        out.append(f"  train step >= {1e3 * self.step_time_lower_bound_s:.2f} ms at peak "
                   "(FLOPs per device / peak; loop bodies counted once: a lower bound)")
      verdict = "FITS" if self.fits else "DOES NOT FIT"
      out.append(f"  {verdict}: peak {self.peak_bytes / GiB:.2f} GiB of "
                 f"{self.hbm_bytes / GiB:.2f} GiB per chip")
    return out

  def to_dict(self) -> dict:
    progs = {k: dict(dataclasses.asdict(p), total=p.total, peak=p.peak)
             for k, p in self.programs.items()}
    return {"target": self.target, "device_kind": self.device_kind, "mesh": self.mesh,
            "libtpu": self.libtpu, "chip": dataclasses.asdict(self.chip) if self.chip else None,
            "hbm_bytes": self.hbm_bytes, "step_flops": self.step_flops,
            "step_time_lower_bound_s": self.step_time_lower_bound_s,
            "peak_bytes": self.peak_bytes, "fits": self.fits, "programs": progs,
            "notes": self.notes}


@dataclasses.dataclass
class Run:
  """A run's pieces over a mesh, with abstract arguments (what `check` compiles and
  bench/accelerator.py feeds concrete arrays of the same shapes and shardings)."""
  config: Any
  method: Any
  ctx: Any
  mesh: Any
  init_state: Any            # () -> TrainState (jit it with out_shardings=state_sharding)
  state_sharding: Any
  state: Any                 # abstract TrainState
  source: Any                # abstract source batch, or None
  pool: Any                  # abstract target pool (replicated)
  anchor: Any                # abstract anchor, or None
  train_step: Any            # the jitted train.make_train_step
  evaluator: Any             # evaluate.Evaluator over the abstract pool

  def resident_bytes(self) -> dict:
    """Per device: the buffers a run keeps alive beside each program (train.py): the train
    state, the copy of the model selected on target validation, the pool, the anchor."""
    selected = {"params": self.state.params, "model_state": self.state.model_state}
    return {"state": shard_bytes(self.state), "selected": shard_bytes(selected),
            "pool": shard_bytes(self.pool), "anchor": shard_bytes(self.anchor)}


def build(config, devices, method_name: str | None = None, overrides: dict | None = None,
          notes: list | None = None) -> Run:
  """The run of `config` over a mesh of `devices`, on abstract arguments.

  method_name / overrides: another method on the same config (bench: joint beside MeRLin),
  overrides as config_base.override takes them.
  """
  from merlin_jax import checks, train
  from merlin_jax.runtime import sharding
  from merlin_jax.config_base import override
  from merlin_jax.evaluate import Evaluator
  from merlin_jax.methods import Context
  from merlin_jax.models import make_backbone
  from merlin_jax.optim import make_optimizer

  config, prep_notes = _prepare_config(config)
  if notes is not None:
    notes.extend(prep_notes)
  if method_name:
    config.method = method_name
  if overrides:
    override(config, overrides)
  if (config.model.name == "small_cnn" and config.model.get("conv_batch_chunk", -1) < 0
      and devices[0].platform != "cpu"):
    # auto means "as the backend running it wants" (models/cnn.py): this host is a CPU,
    # the target is not, so the target's choice (whole batches), not this host's.
    config.model.conv_batch_chunk = 0
  checked = config.copy_and_resolve_references()
  if not checked.pretrained.path:   # weights are not read here
    checked.pretrained.path = "compile-only"
  method = checks.validate_config(checked)
  mesh = sharding.mesh_from_config(config.mesh, devices)
  data_sh, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
  if method.uses_source:
    sharding.check_divisible(config.batch_size, mesh, "batch_size")

  n_src, n_tgt = config.data.num_source_classes, config.data.num_target_classes
  hp = method.hyper(config, n_src, n_tgt)
  n_pool = target_pool_rows(config)
  if method.check_data is not None:
    method.check_data(hp, n_pool)
  ctx = Context(backbone=make_backbone(config.model, example_input(config)), hp=hp)
  example = jax.tree.map(jnp.asarray, ctx_example(config))
  optimizer = make_optimizer(config.optimizer, config.total_steps)

  def init_state():
    params, model_state = train.init_params(ctx, jax.random.key(config.seed), example)
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            model_state=model_state, opt_state=optimizer.init(params),
                            best_val_accuracy=jnp.zeros((), jnp.float32),
                            best_step=jnp.zeros((), jnp.int32))

  shapes = jax.eval_shape(init_state)
  st_sh = sharding.state_shardings(mesh, shapes, config.mesh.param_sharding,
                                   config.mesh.fsdp_min_size)
  state = jax.tree.map(_sds, shapes, st_sh)
  pool = abstract_inputs(config, n_pool, rep)
  if config.data.kind == "image":
    pool["inputs"] = jax.ShapeDtypeStruct(pool["inputs"].shape, pool_image_dtype(config),
                                          sharding=rep)
  anchor = None
  if method.uses_anchor:   # w0 shards like the backbone; any other anchor is replicated
    shape = jax.eval_shape(lambda p, s, t: method.anchor(ctx, p, s, t),
                           shapes.params, shapes.model_state, pool)
    backbone_like = jax.tree.structure(shape) == jax.tree.structure(shapes.params["backbone"])
    anchor = jax.tree.map(_sds, shape, st_sh.params["backbone"] if backbone_like
                          else jax.tree.map(lambda _: rep, shape))
  step = train.make_train_step(method, ctx, optimizer, jax.random.key(1), mesh=mesh,
                               state_sharding=st_sh)
  source = (abstract_inputs(config, config.batch_size, data_sh) if method.uses_source
            else None)
  evaluator = Evaluator(config, method, ctx, mesh, None, pool, config.seed)
  return Run(config=config, method=method, ctx=ctx, mesh=mesh, init_state=init_state,
             state_sharding=st_sh, state=state, source=source, pool=pool, anchor=anchor,
             train_step=step, evaluator=evaluator)


def check(config, target: str | Target, programs=("train_step", "probe", "eval_batch"),
          method_name: str | None = None, overrides: dict | None = None,
          stop_early: bool = True) -> Report:
  """Compiles `config`'s programs for `target` (see the module docstring) -> Report.

  A 'learned'-head method has no probe: it is skipped. stop_early: stop at the first
  program that does not fit (the answer is known; compiles take minutes). method_name /
  overrides: `build`'s.
  """
  from merlin_jax.runtime import sharding
  target = parse_target(target) if isinstance(target, str) else target
  devices = target_devices(target)
  notes = []
  run = build(config, devices, method_name, overrides, notes)
  mesh, state = run.mesh, run.state
  data_sh, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
  resident = run.resident_bytes()
  chip = target.chip or chip_for_device(devices[0])
  # While evaluating, the optimizer state, the selected copy, the pool and the anchor stay.
  live = sum(resident.values())
  b = run.evaluator.batch_size
  head = jax.tree.map(lambda a: _sds(a, rep), state.params["target_head"])
  batch = dict(abstract_inputs(run.config, b, data_sh),
               mask=jax.ShapeDtypeStruct((b,), jnp.float32, sharding=data_sh))
  todo = {
      "train_step": lambda: analyse("train_step", run.train_step.lower(
          state, run.source, run.pool, run.anchor), resident["selected"]),
      "probe": lambda: analyse("probe", run.evaluator._fit_probe.lower(
          state.params, state.model_state, run.pool),
          live - shard_bytes((state.params, state.model_state, run.pool))),
      "eval_batch": lambda: analyse("eval_batch", run.evaluator._batch_stats.lower(
          head, state.params, state.model_state, batch),
          live - shard_bytes((head, state.params, state.model_state))),
  }
  if run.method.eval_head != "probe":
    todo.pop("probe")
  results = {}
  for name, compile_one in todo.items():
    if name not in programs:
      continue
    results[name] = compile_one()
    if stop_early and chip and results[name].peak > chip.hbm_bytes:
      notes.append(f"stopped after {name}: it does not fit")
      break
  return Report(target=target.spec, device_kind=devices[0].device_kind,
                mesh={k: int(v) for k, v in mesh.shape.items()}, chip=chip,
                libtpu=libtpu_version() if target.platform == "tpu" else None,
                programs=results, config=run.config, notes=notes)


def ctx_example(config):
  """The concrete example row `init_params` reads (zeros; only its shape matters)."""
  ex = example_input(config)
  if isinstance(ex, tuple):
    return np.zeros(ex, np.float32)
  return ex
