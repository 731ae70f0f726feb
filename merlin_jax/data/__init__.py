"""Data: offline TFDS builders, the source stream and the target splits.

Importing this package registers the custom builders (`merlin_jax.data.builders`) with TFDS.
`load_transfer_data(config.data, seed)` is what the training program calls; what it returns
is documented in `merlin_jax.data.interface`.
"""

from merlin_jax.data import builders  # registers the builders with TFDS
from merlin_jax.data.interface import SourceStream, TransferData
from merlin_jax.data.pipeline import load_transfer_data
from merlin_jax.data.signature import add_signature
from merlin_jax.data.splits import class_balanced_split

__all__ = ["SourceStream", "TransferData", "load_transfer_data", "add_signature",
           "class_balanced_split", "builders"]
