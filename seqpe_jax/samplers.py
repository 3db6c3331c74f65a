"""Position samplers for SeqPE's regularisers and random shift, in pure `jax.random`.

Method doc §4-6. Everything here runs inside the jitted train step: static
shapes, no host callbacks, deterministic given a PRNG key. Sizes and bounds are
Python values (bind them with `functools.partial` before `jax.jit`). Positions
are int32 `[..., d]` with every coordinate in `[0, max_position)`.

Deliberate differences from the official host-side samplers:
* pivots and OOD offsets are drawn i.i.d. each step; the official code shuffles
  the full position / offset list once per epoch (same marginal distribution);
  shift offsets are drawn from the fixed pool with replacement instead of
  cycling through it;
* retry-until-success loops become a fixed number of vectorised proposals
  (first valid wins; a digit edit with no valid proposal is skipped);
* the n-D OOD offset excludes the training box exactly (no rejection loop);
  the 1-D minimum offset defaults to L, so every student is out of the
  training range (the official L//4 is `OODConfig(min_offset=L // 4)`), and
  the upper bounds P-L (OOD) and P-w (window origin) are inclusive;
* hard negatives generalise the official 2-D string split to any d (cuts
  uniform over all valid splits).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax.errors import ConfigError

_EDIT_TRIES = 16  # proposals per digit edit (the official code retries until success)
_MAX_EDITS = 3  # each hard negative tries 1.._MAX_EDITS edits (uniform)


# Basics.


def sample_without_replacement(key: jax.Array, n: int, k: int,
                               shape: Sequence[int] = ()) -> jax.Array:
  """int32 `[*shape, k]`: k distinct values from [0, n), uniform set, random order.

  Robert Floyd's algorithm (k steps, O(k^2) compares, cost independent of n)
  followed by a random permutation, since Floyd's output order is not uniform.
  """
  n, k, shape = int(n), int(k), tuple(int(s) for s in shape)
  if not 0 <= k <= n:
    raise ValueError(f'sample_without_replacement: need 0 <= k <= n, got k={k}, n={n}')
  if n >= 2**31:
    raise ValueError(f'sample_without_replacement: n={n} does not fit int32')
  if k == 0:
    return jnp.zeros((*shape, 0), jnp.int32)
  floyd_key, perm_key = jax.random.split(key)
  size = math.prod(shape)  # draw flat: rank >= 3 random draws compile slowly on CPU
  # Step i draws t_i uniform in [0, j_i], j_i = n - k + i, from fold_in(key, i): all k draws
  # at once (the same numbers as drawing inside the loop, where every draw was its own
  # rolled threefry loop on CPU: ~15 ops per draw per step).
  j_K = n - k + jnp.arange(k, dtype=jnp.int32)
  keys_K = jax.vmap(lambda i: jax.random.fold_in(floyd_key, i))(jnp.arange(k))
  t_KxS = jax.vmap(lambda kk, j: jax.random.randint(kk, (size,), 0, j + 1, dtype=jnp.int32))(
      keys_K, j_K)

  def step(i, chosen):
    t = t_KxS[i].reshape(shape)
    # t already taken -> take j instead (j is new: every earlier pick is < j).
    taken = jnp.any(chosen == t[..., None], axis=-1)
    return chosen.at[..., i].set(jnp.where(taken, j_K[i], t))

  chosen = jax.lax.fori_loop(0, k, step, jnp.full((*shape, k), -1, jnp.int32))
  # Sort by random tags (as jax.random.permutation does; ties have probability < k^2/2^33).
  return jnp.take_along_axis(chosen, jnp.argsort(_bits(perm_key, chosen.shape), axis=-1), -1)


def _bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """uint32 random bits, drawn flat (rank >= 3 draws compile slowly on CPU)."""
  return jax.random.bits(key, (math.prod(shape),)).reshape(shape)


def _unravel(flat: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Row-major coordinates `[..., len(shape)]` of flat indices in [0, prod(shape))."""
  return jnp.stack(jnp.unravel_index(flat, tuple(shape)), axis=-1).astype(jnp.int32)


def _dist_rank(a: jax.Array, b: jax.Array) -> jax.Array:
  """Order-equivalent of the squared Euclidean distance, exact in integers.

  1-D: |a - b| (int32, any position); n-D: sum of squares in uint32, exact
  while d * (P-1)**2 < 2**32 (checked by the samplers).
  """
  diff = jnp.abs(a.astype(jnp.int32) - b.astype(jnp.int32))
  if a.shape[-1] == 1:
    return diff[..., 0]
  diff = diff.astype(jnp.uint32)
  return jnp.sum(diff * diff, axis=-1, dtype=jnp.uint32)


def nearest_label(pivot_xd: jax.Array, cands_xKxd: jax.Array) -> jax.Array:
  """int32 `[...]`: index of the candidate nearest to the pivot (ties -> first)."""
  pivot_xd, cands_xKxd = jnp.asarray(pivot_xd), jnp.asarray(cands_xKxd)
  return jnp.argmin(_dist_rank(pivot_xd[..., None, :], cands_xKxd), axis=-1).astype(jnp.int32)


# Contrastive sampler (method doc §5).


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
  """Contrastive sampler settings (method doc §5): B_ct pivots, K candidates each.

  `mode_probs` are the probabilities of the modes (random, hard negatives,
  window); `window` is the window side per axis, in positions.
  """
  num_pivots: int = 16
  num_candidates: int = 32
  mode_probs: tuple[float, float, float] = (0.0, 0.4, 0.6)
  hard_ratio: float = 0.25
  window: int = 256

  def __post_init__(self):
    if self.num_pivots < 1 or self.num_candidates < 1 or self.window < 1:
      raise ConfigError(f'ContrastiveConfig: sizes must be >= 1, got {self}')
    probs = tuple(float(p) for p in self.mode_probs)
    object.__setattr__(self, 'mode_probs', probs)  # a tuple keeps the config hashable (static)
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
      raise ConfigError(f'ContrastiveConfig: mode_probs must be 3 probabilities summing to 1, '
                        f'got {self.mode_probs}')
    if not 0.0 <= self.hard_ratio <= 1.0:
      raise ConfigError(f'ContrastiveConfig: hard_ratio must lie in [0, 1], got {self.hard_ratio}')

  @property
  def num_hard(self) -> int:
    """n_hard = int(hard_ratio * K), as the official code."""
    return int(self.hard_ratio * self.num_candidates)

  @classmethod
  def official_text(cls, num_pivots: int = 16, num_candidates: int = 32) -> 'ContrastiveConfig':
    """Text sampler: 40% hard negatives (K/4), 60% window of max(256, 5K)."""
    return cls(num_pivots, num_candidates, (0.0, 0.4, 0.6), 0.25, max(256, 5 * num_candidates))

  @classmethod
  def official_vision(cls, num_pivots: int = 32, num_candidates: int = 64,
                      train_grid: Sequence[int] = (14, 14)) -> 'ContrastiveConfig':
    """Vision sampler: 50% random, 30% hard (K/5), 20% window of side 17 (K=64)."""
    side = max(int(math.sqrt(math.prod(train_grid))), int(math.sqrt(5 * num_candidates)))
    return cls(num_pivots, num_candidates, (0.5, 0.3, 0.2), 0.2, side)


def _digit_string(pos_xd: jax.Array, max_digits: int) -> tuple[jax.Array, jax.Array]:
  """Official digit string of positions: `(digits [..., d*max_digits], length [...])`.

  Unpadded axis strings concatenated, read as an integer as the official code
  does: (12, 3) -> "123", (0, 5) -> "5". Left-aligned, zeros past the length.
  """
  d, m = pos_xd.shape[-1], max_digits
  powers = 10 ** jnp.arange(m - 1, -1, -1, dtype=jnp.int32)
  digits = ((pos_xd[..., None] // powers) % 10).reshape(*pos_xd.shape[:-1], d * m)
  ndig = 1 + sum((pos_xd >= 10**i).astype(jnp.int32) for i in range(1, m))
  # Leading all-zero axes vanish in int("0" "5"); keep at least one digit.
  lead_zero_axes = jnp.sum(jnp.cumprod(pos_xd == 0, axis=-1), axis=-1)
  ndig = jnp.where(jnp.arange(d) < jnp.minimum(lead_zero_axes, d - 1)[..., None], 0, ndig)
  start = jnp.cumsum(ndig, axis=-1) - ndig
  t = jnp.arange(d * m)
  axis = jnp.minimum(jnp.sum((start + ndig)[..., None, :] <= t[:, None], axis=-1), d - 1)
  buf = _pick(digits, axis * m + m - _pick(ndig, axis) + t - _pick(start, axis))
  length = jnp.sum(ndig, axis=-1)
  return jnp.where(t < length[..., None], buf, 0), length


def _parse(buf: jax.Array, start: jax.Array, length: jax.Array, max_digits: int) -> jax.Array:
  """Integer value of `buf[..., start:start+length]` (length <= max_digits <= 9)."""
  j = jnp.arange(max_digits)
  digits = _pick(buf, start[..., None] + j)
  powers = _pick(10 ** jnp.arange(max_digits, dtype=jnp.int32), length[..., None] - 1 - j)
  return jnp.sum(jnp.where(j < length[..., None], digits * powers, 0), axis=-1)


def _pick(x: jax.Array, idx: jax.Array) -> jax.Array:
  """`x[..., idx]` on the (short) last axis as a one-hot sum; out of range -> 0.

  `x` and `idx` broadcast on the leading axes. Cheaper to compile than
  `take_along_axis` for these tiny digit buffers.
  """
  hit = idx[..., None] == jnp.arange(x.shape[-1])
  return jnp.sum(jnp.where(hit, x[..., None, :], 0), axis=-1)


def _small_int(bits: jax.Array, lo, hi) -> jax.Array:
  """int32 in [lo, hi) from uint32 bits (hi - lo <= 10: modulo bias < 3e-9)."""
  return lo + (bits % jnp.asarray(hi - lo, jnp.uint32)).astype(jnp.int32)


def _edit_once(bits, buf, n, pivot_buf, pivot_n, *, max_position: int, data_dim: int):
  """One digit edit of each string `(buf [..., L], n [...])`: `(buf, n, ok [...])`.

  Makes `_EDIT_TRIES` proposals from `bits` (uint32 `[..., _EDIT_TRIES, 4]`), each with
  its own op (insert / swap / replace / delete, uniform) and arguments, and keeps the first
  valid one; where none is valid the string is unchanged and ok is False. A proposal is valid when
  it obeys the official rules: no leading zero, insert only below L digits
  (for 1-D every result must also stay < P), swap and replace must change the
  string, delete needs two digits, and the result differs from the pivot.
  """
  L = buf.shape[-1]
  n_T = n[..., None]
  op = _small_int(bits[..., 0], 0, 4)
  ins, swp, rep, dele = (op == i for i in range(4))
  p = _small_int(bits[..., 1], 0, n_T + ins)  # insert: 0..n, others 0..n-1
  c = _small_int(bits[..., 2], jnp.where(ins & (p == 0), 1, 0), 10)
  q = (p + 1 + _small_int(bits[..., 3], 0, jnp.maximum(n_T - 1, 1))) % jnp.maximum(n_T, 1)
  t, pe, qe = jnp.arange(L), p[..., None], q[..., None]
  src = jnp.select([ins[..., None], swp[..., None], dele[..., None]],
                   [jnp.where(t < pe, t, t - 1),
                    jnp.where(t == pe, qe, jnp.where(t == qe, pe, t)),
                    jnp.where(t < pe, t, t + 1)], t)
  new = _pick(buf[..., None, :], src)
  new = jnp.where((ins | rep)[..., None] & (t == pe), c[..., None], new)
  n_new = n_T + ins.astype(jnp.int32) - dele.astype(jnp.int32)
  new = jnp.where(t < n_new[..., None], new, 0)

  at = lambda idx: _pick(buf, idx)
  ok = ~ins | (n_T < L)
  ok &= ~swp | ((n_T >= 2) & (at(p) != at(q)))
  ok &= ~rep | ((c != at(p)) & ~((p == 0) & (c == 0)))
  ok &= ~dele | ((n_T >= 2) & ~((p == 0) & (at(jnp.ones_like(p)) == 0)))
  ok &= (new[..., 0] != 0) | (n_new == 1)
  ok &= ~((n_new == pivot_n[..., None]) & jnp.all(new == pivot_buf[..., None, :], axis=-1))
  if data_dim == 1:
    ok &= _parse(new, jnp.zeros_like(n_new), n_new, L) < max_position

  first = ok & (jnp.cumsum(ok, axis=-1) == 1)  # one-hot of the first valid proposal
  any_ok = jnp.any(ok, axis=-1)
  pick_buf = jnp.sum(jnp.where(first[..., None], new, 0), axis=-2)
  pick_n = jnp.sum(jnp.where(first, n_new, 0), axis=-1)
  return jnp.where(any_ok[..., None], pick_buf, buf), jnp.where(any_ok, pick_n, n), any_ok


def _split_string(key, buf, n, data_dim: int, max_digits: int) -> jax.Array:
  """Split digit strings into d integers of 1..max_digits digits each: `[..., d]`.

  Strings shorter than d digits are first padded with '0's on random sides;
  the cut points are uniform over all valid splits (official 2-D: a uniform
  first-part length); parts parse as integers ("03" -> 3).
  """
  d, m, L = data_dim, max_digits, buf.shape[-1]
  splits = np.array(list(itertools.product(range(1, m + 1), repeat=d)), np.int32)  # [C, d]
  bits = _bits(key, n.shape + (d - 1 + len(splits),))
  zeros = jnp.maximum(d - n, 0)
  coins = (bits[..., :d - 1] & 1) == 1
  left = jnp.sum(coins & (jnp.arange(d - 1) < zeros[..., None]), axis=-1)
  buf = _pick(buf, jnp.arange(L) - left[..., None])  # shift right; zeros fill in
  n = n + zeros
  fits = splits.sum(-1) == n[..., None]
  # Uniform among the fitting splits: the largest random tag (>= 1) wins.
  choice = jnp.argmax(jnp.where(fits, (bits[..., d - 1:] >> 1) + 1, 0), axis=-1)
  lens = jnp.asarray(splits)[choice]
  starts = jnp.cumsum(lens, axis=-1) - lens
  return jnp.stack([_parse(buf, starts[..., a], lens[..., a], m) for a in range(d)], axis=-1)


def _hard_negatives(key, pivots_Bxd: jax.Array, num: int, *, max_position: int,
                    max_digits: int) -> tuple[jax.Array, ...]:
  """`num` digit-edited variants per pivot: `(positions [B, H, d], valid [B, H], strings)`.

  Fixed-shape version of the official generator (method doc §5.3): strings are
  int digit buffers of length d*max_digits plus a length. Each variant applies
  1-3 (uniform) edits via `_edit_once`, then `_split_string` turns the string
  back into d coordinates. Valid iff at least one edit succeeded (so the
  string differs from the pivot's), every coordinate is < P, and the variant
  is not the pivot. The edited strings `(digits [B, H, L], length [B, H])`
  are returned too, for tests.
  """
  b, d = pivots_Bxd.shape
  pivot_buf, pivot_n = _digit_string(pivots_Bxd, max_digits)
  buf = jnp.broadcast_to(pivot_buf[:, None], (b, num, pivot_buf.shape[-1]))
  n = jnp.broadcast_to(pivot_n[:, None], (b, num))
  k_num, k_edit, k_split = jax.random.split(key, 3)
  num_edits = jax.random.randint(k_num, (b, num), 1, _MAX_EDITS + 1)

  # Every edit's proposal bits at once (as if drawn in the loop: one threefry, not three).
  bits_E = jax.vmap(lambda e: _bits(jax.random.fold_in(k_edit, e), (b, num, _EDIT_TRIES, 4)))(
      jnp.arange(_MAX_EDITS))

  def edit(e, state):
    buf, n, edited = state
    new_buf, new_n, ok = _edit_once(bits_E[e], buf, n, pivot_buf[:, None], pivot_n[:, None],
                                    max_position=max_position, data_dim=d)
    apply = (e < num_edits) & ok
    return (jnp.where(apply[..., None], new_buf, buf), jnp.where(apply, new_n, n),
            edited | apply)

  buf, n, edited = jax.lax.fori_loop(0, _MAX_EDITS, edit, (buf, n, jnp.zeros((b, num), bool)))
  hard_BxHxd = _split_string(k_split, buf, n, d, max_digits)
  valid = (edited & jnp.all(hard_BxHxd < max_position, axis=-1)
           & jnp.any(hard_BxHxd != pivots_Bxd[:, None], axis=-1))
  return hard_BxHxd, valid, buf, n


def _window_samples(key, b: int, k: int, data_dim: int, max_position: int,
                    side: int) -> tuple[jax.Array, jax.Array]:
  """k distinct cells of a random window of `side`^d per row: `([b, k, d], valid [b, k])`."""
  k_origin, k_cells = jax.random.split(key)
  origin_Bxd = jax.random.randint(k_origin, (b, data_dim), 0, max_position - side + 1,
                                  dtype=jnp.int32)
  take = min(k, side**data_dim)  # a window smaller than K: take every cell
  flat = sample_without_replacement(k_cells, side**data_dim, take, (b,))
  cells = _unravel(flat, (side,) * data_dim) + origin_Bxd[:, None]
  pad = k - take
  cells = jnp.concatenate([cells, jnp.zeros((b, pad, data_dim), jnp.int32)], axis=1)
  return cells, jnp.broadcast_to(jnp.arange(k) < take, (b, k))


def _check_contrastive(cfg: ContrastiveConfig, p: int, d: int, max_digits: int) -> None:
  k = cfg.num_candidates
  for bad, why in [
      (d < 1 or not 1 <= max_digits <= 9, 'need data_dim >= 1 and 1 <= max_digits <= 9'),
      (p**d < k + 2, f'max_position**data_dim = {p}**{d} < K + 2 = {k + 2}'),
      (p > 10**max_digits, f'positions up to {p - 1} exceed max_digits={max_digits}'),
      (p**d >= 2**31 or (d > 1 and d * (p - 1)**2 >= 2**32), 'too many positions for int32')]:
    if bad:
      raise ConfigError(f'contrastive sampler (max_position={p}, data_dim={d}): {why}')


def _candidate_lists(key, cfg: ContrastiveConfig, *, max_position: int, data_dim: int,
                     max_digits: int):
  """Unmerged sampler state: `(pivots, mode, special, special_valid, simple)`.

  Shapes `[B, d]`, `[B]` (0 random, 1 hard, 2 window), `[B, K, d]`, `[B, K]`,
  `[B, K+1, d]`. Split out of `contrastive_batch` so tests can inspect it.
  """
  _check_contrastive(cfg, max_position, data_dim, max_digits)
  b, k, p, d, n_hard = cfg.num_pivots, cfg.num_candidates, max_position, data_dim, cfg.num_hard
  k_piv, k_simple, k_mode, k_hard, k_win = jax.random.split(key, 5)
  pivots_Bxd = jax.random.randint(k_piv, (b, d), 0, p, dtype=jnp.int32)
  simple_BxMxd = _unravel(sample_without_replacement(k_simple, p**d, k + 1, (b,)), (p,) * d)
  # mode = [u >= c0] + [u >= c1], as the official [u > .5] + [u > .8].
  probs = np.asarray(cfg.mode_probs, np.float64)
  c0, c1 = np.cumsum(probs / probs.sum())[:2]
  u = jax.random.uniform(k_mode, (b,))
  mode_B = (u >= c0).astype(jnp.int32) + (u >= c1).astype(jnp.int32)

  hard_BxKxd = jnp.zeros((b, k, d), jnp.int32)
  hard_ok_BxK = jnp.zeros((b, k), bool)
  if n_hard > 0:
    hard, hard_ok, _, _ = _hard_negatives(k_hard, pivots_Bxd, n_hard, max_position=p,
                                          max_digits=max_digits)
    # Keep hard negatives strictly farther than the nearest of the first K+1-n_hard simple ones.
    min_simple_B = jnp.min(_dist_rank(pivots_Bxd[:, None], simple_BxMxd[:, :k + 1 - n_hard]), -1)
    hard_ok &= _dist_rank(pivots_Bxd[:, None], hard) > min_simple_B[:, None]
    hard_BxKxd = hard_BxKxd.at[:, :n_hard].set(hard)
    hard_ok_BxK = hard_ok_BxK.at[:, :n_hard].set(hard_ok)
  win_BxKxd, win_ok_BxK = _window_samples(k_win, b, k, d, p, min(cfg.window, p))

  special_BxKxd = jnp.where((mode_B == 1)[:, None, None], hard_BxKxd, win_BxKxd)
  special_ok_BxK = jnp.where((mode_B == 1)[:, None], hard_ok_BxK,
                             (mode_B == 2)[:, None] & win_ok_BxK)
  return pivots_Bxd, mode_B, special_BxKxd, special_ok_BxK, simple_BxMxd


def _merge(pivots_Bxd, special_BxSxd, special_ok_BxS, simple_BxMxd, k: int) -> jax.Array:
  """Official merge: special then simple, drop pivot / repeats / invalid, first k."""
  cands = jnp.concatenate([special_BxSxd, simple_BxMxd], axis=1)
  ok = jnp.concatenate([special_ok_BxS, jnp.ones(simple_BxMxd.shape[:2], bool)], axis=1)
  ok &= jnp.any(cands != pivots_Bxd[:, None], axis=-1)
  same = jnp.all(cands[:, :, None] == cands[:, None, :], axis=-1)  # [B, N, N]
  n = cands.shape[1]
  earlier = jnp.tril(jnp.ones((n, n), bool), -1)
  keep = ok & ~jnp.any(same & earlier & ok[:, None, :], axis=-1)
  # Survivors first, in their original order; the K+1 distinct simple entries
  # leave at least K survivors, so the first K are all valid.
  order = jnp.argsort((~keep).astype(jnp.int32), axis=-1, stable=True)[:, :k]
  return jnp.take_along_axis(cands, order[..., None], axis=1)


def contrastive_batch(key: jax.Array, cfg: ContrastiveConfig, *, max_position: int,
                      data_dim: int, max_digits: int
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pivots, candidates and labels for the contrastive loss (method doc §5).

  Pivots are i.i.d. uniform over [0, P)^d (the official code instead shuffles
  the full position list once per epoch). Each pivot gets K+1 distinct uniform
  "simple" positions plus, by mode, nothing (random), hard negatives (digit
  edits farther than the nearest of the first K+1-n_hard simple ones), or K
  distinct cells of a random window of side min(window, P). The lists merge as
  in the official code (special then simple, no pivot, no repeats, first K).

  Returns:
    pivots `[B, d]`, candidates `[B, K, d]` (distinct, never the pivot) and
    labels `[B]`: the index of the candidate nearest to the pivot (ties -> first).
  """
  pivots, _, special, special_ok, simple = _candidate_lists(
      key, cfg, max_position=max_position, data_dim=data_dim, max_digits=max_digits)
  candidates_BxKxd = _merge(pivots, special, special_ok, simple, cfg.num_candidates)
  return pivots, candidates_BxKxd, nearest_label(pivots, candidates_BxKxd)


# OOD distillation sampler (method doc §6).


@dataclasses.dataclass(frozen=True)
class OODConfig:
  """OOD distillation sampler (method doc §6): B_t items of n_t points each.

  `min_offset` (1-D only): smallest offset; None means the training length L,
  so every student lies outside [0, L). The official code uses L // 4.
  """
  num_items: int = 16
  num_points: int = 32
  min_offset: int | None = None

  @classmethod
  def official_text(cls) -> 'OODConfig':
    return cls(16, 32)

  @classmethod
  def official_vision(cls) -> 'OODConfig':
    return cls(32, 64)


def _offset_outside_box(key, b: int, grid: tuple[int, ...], max_position: int) -> jax.Array:
  """int32 `[b, d]` uniform over {0..P-g_a}^d minus the box {0..g_a-1}^d, exactly.

  The set splits into disjoint slabs: slab a has coordinates inside the box on
  axes < a and outside it on axis a (any value on later axes). Draw a slab with
  probability proportional to its size, then each coordinate uniformly.
  """
  starts = [max_position - g + 1 for g in grid]         # valid offsets per axis
  box = [min(g, s) for g, s in zip(grid, starts)]
  sizes = [math.prod(box[:a]) * (starts[a] - box[a]) * math.prod(starts[a + 1:])
           for a in range(len(grid))]
  if sum(sizes) == 0:
    raise ConfigError(f'ood_batch: no offset in [0, {max_position})^d moves the grid {grid} '
                      f'outside itself; need max_position >= 2 * g_a on some axis')
  k_slab, k_coord = jax.random.split(key)
  u = jax.random.randint(k_slab, (b, 1), 0, sum(sizes), dtype=jnp.int32)
  slab = jnp.sum(u >= jnp.asarray(np.cumsum(sizes), jnp.int32), axis=-1, keepdims=True)
  axes = jnp.arange(len(grid))
  lo = jnp.where(axes == slab, jnp.asarray(box), 0)
  hi = jnp.where(axes < slab, jnp.asarray(box), jnp.asarray(starts))
  return jax.random.randint(k_coord, (b, len(grid)), lo, hi, dtype=jnp.int32)


def ood_batch(key: jax.Array, cfg: OODConfig, *, train_grid: Sequence[int],
              max_position: int) -> tuple[jax.Array, jax.Array]:
  """Teacher indices and translated student positions (method doc §6.1).

  Returns:
    teacher_index `[B_t, n_t]`: distinct flat (row-major) indices into the
      training grid; students `[B_t, n_t, d]` = unravel(index) + offset, one
      offset per item. 1-D offsets are uniform in [min_offset, P - L]; n-D
      offsets uniform over {0..P-g_a}^d minus {0..g_a-1}^d, so every student has
      some coordinate >= g_a. All students lie in [0, P)^d.
  """
  grid, p = tuple(int(g) for g in train_grid), max_position
  d, n, b = len(grid), math.prod(grid), cfg.num_items
  if (d < 1 or min(grid) < 1 or max(grid) > p or p**d >= 2**31
      or not 1 <= cfg.num_points <= n):
    raise ConfigError(f'ood_batch: need 1 <= num_points <= prod(train_grid) and a training '
                      f'grid {grid} inside max_position={p}; got num_points={cfg.num_points}')
  k_idx, k_off = jax.random.split(key)
  teacher_index_Bxn = sample_without_replacement(k_idx, n, cfg.num_points, (b,))
  if d == 1:
    lo = grid[0] if cfg.min_offset is None else int(cfg.min_offset)
    if not 0 <= lo <= p - grid[0]:
      raise ConfigError(f'ood_batch: offsets [{lo}, {p - grid[0]}] are empty or negative for '
                        f'training length {grid[0]} and max_position={p}')
    offset_Bxd = jax.random.randint(k_off, (b, 1), lo, p - grid[0] + 1, dtype=jnp.int32)
  else:
    if cfg.min_offset is not None:
      raise ConfigError('ood_batch: min_offset applies to 1-D only (n-D excludes the grid box)')
    offset_Bxd = _offset_outside_box(k_off, b, grid, p)
  students_Bxnxd = _unravel(teacher_index_Bxn, grid) + offset_Bxd[:, None]
  return teacher_index_Bxn, students_Bxnxd


# Random shift (method doc §4).


def make_shift_pool(seed: int, *, train_grid: Sequence[int], max_position: int,
                    pool_size: int = 320) -> np.ndarray:
  """Host-side fixed pool of start offsets (method doc §4): int32 `[S, d]`.

  All offsets in {0..P-g_a}^d (row-major), shuffled with
  `np.random.default_rng(seed)`; the first `pool_size` are kept (0 or more
  than the count keeps all).
  """
  counts = [max_position - int(g) + 1 for g in train_grid]
  if min(counts) < 1:
    raise ConfigError(f'make_shift_pool: training grid {tuple(train_grid)} does not fit in '
                      f'max_position={max_position}')
  order = np.random.default_rng(seed).permutation(math.prod(counts))
  if 0 < pool_size < len(order):
    order = order[:pool_size]
  return np.stack(np.unravel_index(order, counts), axis=-1).astype(np.int32)


def shift_offsets(key: jax.Array, pool_Sxd: jax.Array, num_sets: int) -> jax.Array:
  """int32 `[num_sets, d]`: offsets drawn uniformly, with replacement, from the pool."""
  idx = jax.random.randint(key, (num_sets,), 0, pool_Sxd.shape[0], dtype=jnp.int32)
  return jnp.asarray(pool_Sxd, jnp.int32)[idx]


def shifted_grid(offsets_Sxd: jax.Array, train_grid: Sequence[int]) -> jax.Array:
  """int32 `[S, N, d]`: the row-major training grid translated by each offset."""
  grid_Nxd = _unravel(jnp.arange(math.prod(train_grid), dtype=jnp.int32), train_grid)
  return grid_Nxd[None] + jnp.asarray(offsets_Sxd, jnp.int32)[:, None]


def use_shift(key: jax.Array, rate: float) -> jax.Array:
  """bool scalar: whether this step uses shifted positions (probability `rate`)."""
  return jax.random.bernoulli(key, rate)
