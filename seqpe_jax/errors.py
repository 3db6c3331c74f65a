"""Errors that end a run with one line on stderr and a distinct exit code.

| exit | class                 | meaning                                                     |
|------|-----------------------|-------------------------------------------------------------|
| 2    | UserError (+ subclasses) | a mistake in the config, data or workdir; nothing written |
| 3    | NonFiniteError        | NaN/Inf loss term or gradient; last good checkpoint kept    |
| 74   | CheckpointWriteError  | a checkpoint could not be written (disk full, I/O error)     |
| 75   | Preempted             | SIGTERM/SIGINT/preemption: checkpoint written, rerun        |
"""

USER_ERROR_EXIT_CODE = 2
NONFINITE_EXIT_CODE = 3
CHECKPOINT_WRITE_EXIT_CODE = 74  # EX_IOERR
PREEMPTED_EXIT_CODE = 75         # EX_TEMPFAIL: rerun the same command to resume


class UserError(Exception):
  """A mistake in the user's config, data or workdir (not a bug in seqpe_jax)."""

  exit_code = USER_ERROR_EXIT_CODE


class ConfigError(UserError, ValueError):
  """An invalid or inconsistent configuration value."""


class DataError(UserError):
  """Missing, empty or undecodable input data."""


class CheckpointError(UserError):
  """A checkpoint that cannot be used with this config."""


class RunStopped(Exception):
  """A run stopped on purpose (not a user mistake); `main` prints the message."""

  exit_code = 1


class NonFiniteError(RunStopped):
  """A NaN/Inf loss term or gradient (the state keeps the last finite values)."""

  exit_code = NONFINITE_EXIT_CODE


class CheckpointWriteError(RunStopped):
  """Writing a checkpoint failed (the previous complete checkpoint is intact)."""

  exit_code = CHECKPOINT_WRITE_EXIT_CODE


class Preempted(RunStopped):
  """SIGTERM / SIGINT / a TPU preemption notice; raised once the checkpoint is complete."""

  exit_code = PREEMPTED_EXIT_CODE


def check_choice(what: str, value, choices) -> None:
  """`ConfigError('<what> must be a, b or c, got <value>')` unless `value` is one of `choices`."""
  if value not in choices:
    listed = ', '.join(choices[:-1]) + f' or {choices[-1]}'
    raise ConfigError(f'{what} must be {listed}, got {value!r}')


def one_line(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, capped, so that reports stay one line."""
  text = str(e).strip().splitlines()
  line = f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')
  return line if len(line) <= limit else line[:limit - 3] + '...'
