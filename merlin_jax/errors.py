"""User-facing errors: one clear line naming the fix, no traceback (unless --verbose)."""


class UserError(Exception):
  """Bad input from the user (config, data dir, weights file, workdir...).

  `main` prints `str(err)` as a single line and exits non-zero. The message must
  name what is wrong and how to fix it.
  """


class ConfigError(UserError):
  """A config value is invalid; the message names the config key."""

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"config.{key}: {message}")


class DataError(UserError):
  """Data is missing or inconsistent; the message names the command that prepares it."""


class NonFiniteLossError(RuntimeError):
  """A loss or gradient became NaN/inf; training stopped without saving the bad state."""


PREEMPTED_EXIT_CODE = 75   # EX_TEMPFAIL: rerun the same command to resume


class Preempted(Exception):
  """SIGTERM (a preemption notice) arrived: a checkpoint of `step` was saved, then training
  stopped. Rerunning the same command resumes from it; the command lines exit with
  PREEMPTED_EXIT_CODE. step=None: a driver of several runs (compare, the suite) stopped
  before starting the run in `directory`, the signal having come during the previous one."""

  def __init__(self, step: int | None, directory: str):
    self.step, self.directory = step, directory
    if step is None:
      super().__init__(f"stopped before the run in {directory} (a stop was requested during "
                       "the previous run, which finished); rerun the same command to go on")
    else:
      super().__init__(f"preempted at step {step}: checkpoint saved in {directory}; rerun "
                       "the same command to resume")
