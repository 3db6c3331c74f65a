"""User-facing errors: `main` prints them as one line and exits with code 2."""


class UserError(Exception):
  """A mistake in the user's config, data or workdir (not a bug in seqpe_jax)."""

  exit_code = 2


class ConfigError(UserError, ValueError):
  """An invalid or inconsistent configuration value."""


class DataError(UserError):
  """Missing, empty or undecodable input data."""


class CheckpointError(UserError):
  """A checkpoint that cannot be used with this config."""
