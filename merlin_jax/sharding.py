"""The device mesh and how arrays are placed on it.

One `Mesh` over all devices with axis 'data'. Batches are sharded along 'data'; parameters,
optimizer state and the (small) target set are replicated. The same code runs on 1 CPU,
N fake CPU devices, a GPU host or a TPU slice; multi-host runs build global arrays from
each process's local data.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from merlin_jax.errors import ConfigError

DATA = "data"


def make_mesh(num_data: int = -1) -> Mesh:
  devices = jax.devices()
  n = len(devices) if num_data in (-1, 0, None) else num_data
  if n > len(devices) or len(devices) % n:
    raise ConfigError("mesh.data", f"{n} devices asked on the 'data' axis but {len(devices)} "
                      "are present; use -1 for all")
  return Mesh(np.asarray(devices[:n]), (DATA,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, key: str) -> None:
  n = mesh.shape[DATA]
  if batch_size % n:
    raise ConfigError(key, f"{batch_size} is not divisible by the {n} devices on the mesh; "
                      f"use a multiple of {n}")


def shard_batch(mesh: Mesh, local_batch):
  """Process-local numpy batch -> global jax.Array sharded along 'data'."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicate(mesh: Mesh, tree):
  """Host values (identical on every process) -> replicated global jax.Arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
