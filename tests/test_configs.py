"""configs/: every file and variant declares only base_config's keys; the shared helpers
(`common.parse_arg`, `common.local`) and `config_base.load_config` / `override`."""

import glob
import os

import ml_collections
import pytest

from merlin_jax.configs import common
from merlin_jax import errors
from merlin_jax.config_base import base_config, get_key, load_config, override
from tests.helpers import assert_one_line_error, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_ARGS = ["finetune", "l2sp,local", "merlin_ft,local,bert_dir=/w", "bert_dir=/w"]
# Every config file -> the get_config arguments it takes (None: get_config()).
VARIANTS = {
    "synthetic": [None],
    **{name: [None, "local"] for name in [
        "digits", "fashion_digits", "fashion_usps", "printed_mnist", "svhn_mnist",
        "signature_cifar10", "signature_fashion", "imagenet_cub", "imagenet_caltech256",
        "imagenet_cars", "food_cub"]},
    **{name: [None] + TEXT_ARGS for name in ["glue_mrpc", "glue_rte", "glue_qnli"]},
    "wic_minilm": [None, "finetune", "merlin_ft,local", "local"],
}


def flat_keys(config) -> set[str]:
  out = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out |= {f"{key}.{k}" for k in flat_keys(value)}
    else:
      out.add(key)
  return out


def test_every_config_file_is_checked():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert files - {"__init__", "common"} == set(VARIANTS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_sets_exactly_the_declared_keys(name, arg):
  """A key a config sets that base_config lacks (a typo, or a new key not declared) fails."""
  spec = os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else "")
  assert flat_keys(load_config(spec)) == flat_keys(base_config())


def test_parse_arg():
  arg = common.parse_arg("finetune,local,bert_dir=D", method="finetune", local=False,
                         bert_dir="")
  assert arg.to_dict() == {"method": "finetune", "local": True, "bert_dir": "D"}
  defaults = dict(method="finetune", local=False, bert_dir="")
  assert common.parse_arg(None, **defaults).to_dict() == defaults
  # Any order, blanks, '=' inside a value, explicit bools, typed values.
  assert common.parse_arg(" bert_dir=a=b , merlin_ft,,local=false", **defaults).to_dict() == {
      "method": "merlin_ft", "local": False, "bert_dir": "a=b"}
  assert common.parse_arg("local", local=False).local
  assert common.parse_arg("n=3,x=0.5", n=1, x=1.0).to_dict() == {"n": 3, "x": 0.5}
  for bad, spec in [("lcoal", dict(local=False)), ("finetune,l2sp", defaults),
                    ("bert_dri=D", defaults), ("local=maybe", defaults), ("n=x", dict(n=1))]:
    with pytest.raises(errors.UserError, match="config argument"):
      common.parse_arg(bad, **spec)


def test_local_shrinks_only_what_it_is_given():
  c = load_config(os.path.join(ROOT, "configs", "digits.py"))
  before = c.to_dict()
  common.local(c)
  changed = {k for k in flat_keys(c) if get_key(c, k) != get_key(
      ml_collections.ConfigDict(before), k)}
  assert changed == {"total_steps", "eval.every", "log_every"}
  assert (c.total_steps, c.eval.every, c.log_every) == (20, 10, 5)
  common.local(c, total_steps=4, eval_every=2, log_every=1, split_size=8, max_length=32)
  assert (c.split.train_size, c.split.val_size, c.data.text.max_length) == (8, 8, 32)


def test_load_config_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  local = load_config(os.path.join(ROOT, "configs", "digits.py:local"))
  assert local.total_steps == 20 and load_config(
      os.path.join(ROOT, "configs", "digits.py")).total_steps == 600
  # A config outside configs/ that uses the shared recipes.
  (tmp_path / "mine.py").write_text(
      "from merlin_jax.configs import common\n\n\ndef get_config(arg=None):\n"
      "  return common.large_image_pair('a', 3, 'b', 2, num_train=10, num_val=5, arg=arg)\n")
  c = load_config("mine.py:local")
  assert (c.data.source.name, c.total_steps, c.batch_size) == ("a", 4, 8)
  with pytest.raises(errors.UserError, match="not found"):
    load_config("missing.py")


def test_override_casts_like_the_grid_and_rejects_unknown_keys():
  c = base_config()
  override(c, {"rho": 3, "inner.steps": 5.0, "inner.first_order": 1, "optimizer.name": "sgd",
               "model.conv_widths": [2, 4]})
  assert c.rho == 3.0 and isinstance(c.rho, float)
  assert c.inner.steps == 5 and isinstance(c.inner.steps, int)
  assert c.inner.first_order is True and c.optimizer.name == "sgd"
  assert c.model.conv_widths == (2, 4)
  for bad in ("rhoo", "inner.stepz", "inner.steps.x"):
    with pytest.raises(errors.ConfigError, match=bad):
      override(c, {bad: 1})
  assert flat_keys(c) == flat_keys(base_config())   # nothing was added


def test_a_bad_config_argument_is_one_line_at_the_command_line(tmp_path, capfd):
  code, err = run_cli([], capfd, config=os.path.join(ROOT, "configs", "digits.py:lcoal"),
                      workdir=str(tmp_path / "w"))
  assert_one_line_error(code, err, "unexpected 'lcoal'")
  assert not (tmp_path / "w").exists()
