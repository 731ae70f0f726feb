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

  def __init__(self, step: int | None, directory: str, before_start: bool = False):
    self.step, self.directory = step, directory
    if before_start:   # a signal during start-up, before anything was written
      super().__init__(f"stopped before the run in {directory} started (a stop was "
                       "requested during start-up; nothing written); rerun the same command "
                       "to start it")
    elif step is None:
      super().__init__(f"stopped before the run in {directory} (a stop was requested during "
                       "the previous run, which finished); rerun the same command to go on")
    else:
      super().__init__(f"preempted at step {step}: checkpoint saved in {directory}; rerun "
                       "the same command to resume")


class InputError(UserError):
  """Inputs given to a loaded model (`Model.predict`/`features`/`logits`) that it cannot
  take as given: the message says what it takes."""


class DamagedError(UserError):
  """A file changed since it was written (a digest mismatch, a torn or unparsable header):
  the message starts with 'damaged: ' and names the file."""

  def __init__(self, path: str, what: str):
    self.path = path
    super().__init__(f"damaged: {path} {what}; restore it from a copy or re-export it "
                     "(rerun the final evaluation of its run)")


STORAGE_EXIT_CODE = 74   # EX_IOERR: storage unreachable or full; fix it, rerun to resume


class StorageError(UserError):
  """The storage of a workdir or model (a bucket, a disk) failed: unreachable, full,
  read-only. Nothing saved before is harmed; once fixed, the same command resumes."""
