"""Custom TFDS builders over files that pip / apt / npm packages ship (no downloads).

Importing this package registers every builder with TFDS, so `tfds.builder(NAME)` works for
`printed_digits`, `sklearn_digits`, `fashion_mnist_local`, `mnist_local`, `usps` and
`caltech256`. The first two are built on first use (`pip_only`); the others read a manual
dir and are prepared once with `python -m merlin_jax.data.prepare NAME`.
"""

from merlin_jax.data.builders import caltech256
from merlin_jax.data.builders import idx_local
from merlin_jax.data.builders import printed_digits
from merlin_jax.data.builders import sklearn_digits
from merlin_jax.data.builders import usps
from merlin_jax.data.builders import wordnet_wic

# Builders whose source files come with pip packages the project already depends on:
# the pipeline may build them on first use.
PIP_ONLY = ("printed_digits", "sklearn_digits")

# Builders that need files from a manual dir: name -> module exposing
# `find_manual_files(name, manual_dir)` (raises DataError naming the package that provides them)
# and `PREPARE_HINT`.
MANUAL = {
    "fashion_mnist_local": idx_local,
    "mnist_local": idx_local,
    "usps": usps,
    "caltech256": caltech256,
    "wordnet_wic": wordnet_wic,   # text; the text pipeline builds it from /usr/share/wordnet on use
}
