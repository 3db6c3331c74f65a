"""Integer positions: digit tokenisation, capacity checks and position grids.

Everything here is integer array arithmetic (no strings), so it runs inside
`jax.jit`. A position tuple `(p_0, ..., p_{n-1})` becomes `n * num_digits`
tokens: each axis written in base `base` with left zero padding, axes
concatenated in order (method doc §1).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax.errors import ConfigError


def capacity(num_digits: int, base: int = 10) -> int:
  """Number of representable values per axis: positions lie in [0, capacity)."""
  return base**num_digits


def digits_needed(max_position: int, base: int = 10) -> int:
  """Smallest digit count that can write every value in [0, max_position]."""
  n = 1
  while base**n <= max_position:
    n += 1
  return n


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_capacity(positions, num_digits: int, base: int = 10, what: str = 'position') -> None:
  """Raises `ValueError` if any concrete position is outside [0, base**num_digits).

  Tracers (inside `jax.jit`) are not checked; call this on the host first.
  """
  if not _is_concrete(positions):
    return
  arr = np.asarray(positions)
  if arr.size == 0:
    return
  cap = capacity(num_digits, base)
  hi, lo = int(arr.max()), int(arr.min())
  if lo < 0:
    raise ValueError(f'{what} {lo} is negative; positions must lie in [0, {cap}).')
  if hi >= cap:
    raise ValueError(
        f'{what} {hi} exceeds the SeqPE digit capacity: {num_digits} base-{base} digits '
        f'represent [0, {cap}); use max_digits >= {digits_needed(hi, base)}.')


def digitize(positions, num_digits: int, base: int = 10) -> jax.Array:
  """Left-zero-padded digits of n-D integer positions.

  Args:
    positions: int array `[..., n]` (n axes; use `[..., 1]` for 1-D).
    num_digits: digits per axis (k).
    base: the number base (10 in the paper).

  Returns:
    int32 `[..., n * k]`: axis 0's k digits (most significant first), then
    axis 1's, and so on. E.g. `digitize([123], 5) == [0, 0, 1, 2, 3]`,
    `digitize([12, 3], 2) == [1, 2, 0, 3]`.

  Raises:
    ValueError: eagerly, for a concrete position outside `[0, base**k)`.
      Under `jax.jit` positions are tracers and cannot be checked: digits of
      out-of-range values are taken modulo `base**k` (silent wrap-around), so
      validate with `check_capacity` before tracing (the trainer and the
      evaluator do).
  """
  check_capacity(positions, num_digits, base)
  pos = jnp.asarray(positions).astype(jnp.int32)
  powers_K = base ** jnp.arange(num_digits - 1, -1, -1, dtype=jnp.int32)
  digits = (pos[..., None] // powers_K) % base  # [..., n, k]
  return digits.reshape(*pos.shape[:-1], pos.shape[-1] * num_digits)


def pad_mask(positions, num_digits: int, base: int = 10) -> jax.Array:
  """bool `[..., n * k]`: True for significant digits, False for padding zeros.

  Position 0 has one significant digit, so 0 with k=5 gives `[F, F, F, F, T]`.
  """
  pos = jnp.asarray(positions).astype(jnp.int32)
  ndig = jnp.ones_like(pos)
  for i in range(1, num_digits):
    ndig = ndig + (pos >= base**i).astype(jnp.int32)
  idx_K = jnp.arange(num_digits, dtype=jnp.int32)
  mask = idx_K >= (num_digits - ndig[..., None])  # [..., n, k]
  return mask.reshape(*pos.shape[:-1], pos.shape[-1] * num_digits)


def axis_ids(data_dim: int, num_digits: int) -> np.ndarray:
  """Axis id of each digit token, e.g. `[0, 0, 1, 1]` for 2 axes of 2 digits."""
  return np.repeat(np.arange(data_dim, dtype=np.int32), num_digits)


def arange_1d(length: int, start: int = 0) -> jax.Array:
  """int32 `[length, 1]` positions `start .. start+length-1`."""
  return (start + jnp.arange(length, dtype=jnp.int32))[:, None]


def grid_2d(height: int, width: int, start: Sequence[int] = (0, 0)) -> jax.Array:
  """int32 `[height*width, 2]` (row, col) coordinates, row-major as the paper."""
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.int32),
                            jnp.arange(width, dtype=jnp.int32), indexing='ij')
  grid = jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1)
  return grid + jnp.asarray(start, dtype=jnp.int32)


def grid(shape: Sequence[int], start: Sequence[int] | None = None) -> jax.Array:
  """int32 `[prod(shape), len(shape)]` row-major coordinates of an n-D grid."""
  axes = [jnp.arange(s, dtype=jnp.int32) for s in shape]
  mesh = jnp.meshgrid(*axes, indexing='ij')
  coords = jnp.stack([m.reshape(-1) for m in mesh], axis=-1)
  if start is not None:
    coords = coords + jnp.asarray(start, dtype=jnp.int32)
  return coords


def validate_positions(max_position: int, num_digits: int, what: str, base: int = 10) -> None:
  """One-line `ConfigError` when a run would need positions past the capacity.

  `max_position` is the largest coordinate the run will encode (e.g. the eval
  length minus one, or the random-shift range minus one).
  """
  cap = capacity(num_digits, base)
  if max_position >= cap:
    raise ConfigError(
        f'{what} needs position {max_position}, beyond the SeqPE digit capacity '
        f'[0, {cap}) of max_digits={num_digits}; set max_digits >= '
        f'{digits_needed(max_position, base)}.')
