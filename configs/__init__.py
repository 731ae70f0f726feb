"""Experiment configs: `python -m merlin_jax.main --config=configs/<name>.py[:arg]`.

Each module's `get_config(arg)` starts from `merlin_jax.config_base.base_config()` (the
schema of keys); recipes shared by several files are in `configs/common.py`. Load one in
Python with `merlin_jax.config_base.load_config("configs/<name>.py[:arg]")`.
"""
