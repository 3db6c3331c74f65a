"""The SeqPE encoder over a digit-prefix tree: every distinct prefix is computed once.

The encoder is causal over most-significant-first digits (method doc §1-2), so the hidden
state of digit t, at every layer, is a function of digits 0..t alone. The positions of a
training step share most of their prefixes (0..511 has 1 + 1 + 6 + 52 + 512 distinct
prefixes of 1..5 digits, not 5 x 512), so the encoder can run on the distinct prefixes (the
nodes of the digit trie) plus one CLS row per position, each node attending to its
ancestors. Same function, same parameters: `SeqPEEncoder(share_prefixes=...)` switches
between this and the plain `[M, T]` layout.

Static shapes: the number of distinct prefixes of t+1 digits is bounded by the number of
positions, by 10**(t+1), and by the positions' range [0, bound) per axis (`bound` comes
from `aux.max_position`: training positions lie below it by construction). Nodes are
numbered in sorted order from ONE sort of the full digit keys; unused slots are padding
rows (computed, never read).

Work per row: block 0's input is a function of the row's (depth, digit) alone (the CLS rows:
one constant), so its LayerNorm and q/k/v projection run on that small table (`x_VxC`,
t * base + 1 rows; at GPT-2 small's width a fifth of the encoder's FLOPs,
benchmarks/results/layer0_table), and so does its attention: q.k is the `[V, H, V]` product
of the table with itself, looked up per (row, ancestor slot), and the weighted sum is the
probabilities scattered onto the ancestors' table rows times the table's values — no
per-slot gather of keys and values (benchmarks/results/table_attention). The last block
(CLS queries only) projects q for the CLS rows and k/v for every row, and gathers.

Sharding: the position batch is split into R groups (the mesh's batch shards) and each
group builds its own tree, so every gather stays inside a shard. Dropout, when on, draws
one mask per (call, depth, prefix) — `keyed_dropout` — so a prefix shared by several
positions is dropped identically for all of them, whatever the grouping (the plain
layout draws one mask per position and digit: the switch back).

Shape letters (besides the package legend): R groups, U tree rows (digit nodes, then one
CLS row per position), Q positions per group, T ancestor slots (= digit tokens + CLS),
V rows of block 0's input table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import layers

Dtype = Any
MAX_KEY_DIGITS = 9  # prefix keys are int32 numbers of up to 9 digits


def depth_bounds(num_positions: int, data_dim: int, max_digits: int,
                 bound: tuple[int, ...], base: int = 10) -> tuple[int, ...]:
  """Static upper bound on the distinct prefixes of each length 1..n*k.

  A prefix ending in axis a's digit j fixes axes < a (each < its bound) and the top
  j+1 digits of axis a (< ceil(bound_a / base**(k-1-j)) values).
  """
  out = []
  for t in range(data_dim * max_digits):
    a, j = divmod(t, max_digits)
    count = math.prod(bound[:a]) * -(-bound[a] // base ** (max_digits - 1 - j))
    out.append(int(min(num_positions, count, base ** (t + 1))))
  return tuple(out)



@dataclasses.dataclass(frozen=True)
class Layout:
  """The static row layout of one group's tree."""

  bounds: tuple[int, ...]  # node slots per depth (digits 1..n*k)
  num_positions: int       # Q: CLS rows (one per position)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum((0,) + self.bounds[:-1]))

  @property
  def num_digit_rows(self) -> int:
    return int(sum(self.bounds))

  @property
  def num_rows(self) -> int:
    return self.num_digit_rows + self.num_positions

  @property
  def depth_U(self) -> np.ndarray:
    """Depth of every row (digit t: t; CLS: n*k)."""
    t = len(self.bounds)
    return np.concatenate([np.full(b, d, np.int32) for d, b in enumerate(self.bounds)]
                          + [np.full(self.num_positions, t, np.int32)])

  @property
  def valid_UxT(self) -> np.ndarray:
    """Which ancestor slots a row attends to: slots 0..depth (its prefix and itself)."""
    t = len(self.bounds) + 1
    return np.arange(t)[None, :] <= self.depth_U[:, None]


@flax.struct.dataclass
class Tree:
  """One group's tree (leading R when vmapped)."""

  tokens_U: jax.Array     # int32 digit of each digit row (CLS rows: 0, unused)
  keys_U: jax.Array       # int32 prefix key of each row (CLS: the full digit key)
  anc_UxT: jax.Array      # int32 row of each ancestor slot (unused slots: the row itself)


def prefix_keys(digits_QxT: jax.Array, base: int = 10) -> jax.Array:
  """int32 `[Q, T]`: column t is the number written by digits 0..t."""
  keys, acc = [], jnp.zeros(digits_QxT.shape[:1], jnp.int32)
  for t in range(digits_QxT.shape[1]):
    acc = acc * base + digits_QxT[:, t]
    keys.append(acc)
  return jnp.stack(keys, axis=1)


def build_tree(digits_QxT: jax.Array, layout: Layout, base: int = 10) -> Tree:
  """The tree of one group's digit strings (vmap it over groups)."""
  q, t_digits = digits_QxT.shape
  keys_QxT = prefix_keys(digits_QxT, base)
  # One sort of the full keys orders every prefix length at once (lexicographic = numeric).
  order_Q = jnp.argsort(keys_QxT[:, -1])
  inv, rep = [], []
  for t, bound in enumerate(layout.bounds):
    sk = keys_QxT[order_Q, t]
    first = jnp.concatenate([jnp.ones((1,), bool), sk[1:] != sk[:-1]])
    node_sorted = jnp.cumsum(first.astype(jnp.int32)) - 1
    inv.append(jnp.zeros((q,), jnp.int32).at[order_Q].set(node_sorted, unique_indices=True))
    # A representative position of each node (its first in sorted order); padding slots: 0.
    rep.append(jnp.zeros((bound,), jnp.int32).at[jnp.where(first, node_sorted, bound)].set(
        order_Q, mode='drop'))
  offs = layout.offsets
  anc_rows, tok_rows, key_rows = [], [], []
  for t, bound in enumerate(layout.bounds):
    own = offs[t] + jnp.arange(bound, dtype=jnp.int32)
    cols = [offs[s] + inv[s][rep[t]] for s in range(t)] + [own]
    cols += [own] * (t_digits + 1 - len(cols))   # slots after the row itself: masked
    anc_rows.append(jnp.stack(cols, axis=1))
    tok_rows.append(digits_QxT[rep[t], t])
    key_rows.append(keys_QxT[rep[t], t])
  cls_rows = layout.num_digit_rows + jnp.arange(q, dtype=jnp.int32)
  anc_rows.append(jnp.stack([offs[s] + inv[s] for s in range(t_digits)] + [cls_rows], axis=1))
  tok_rows.append(jnp.zeros((q,), jnp.int32))
  key_rows.append(keys_QxT[:, -1])
  return Tree(tokens_U=jnp.concatenate(tok_rows), keys_U=jnp.concatenate(key_rows),
              anc_UxT=jnp.concatenate(anc_rows))


def keyed_dropout(x_RxUxC: jax.Array, rate: float, rng: jax.Array, depth_U: np.ndarray,
                  keys_RxU: jax.Array) -> jax.Array:
  """Dropout whose mask is a function of (rng, depth, prefix key): equal prefixes, equal masks."""
  if rate <= 0.0:
    return x_RxUxC
  keep = 1.0 - rate
  c = x_RxUxC.shape[-1]

  def row(depth, key):
    k = jax.random.fold_in(jax.random.fold_in(rng, depth), key)
    return jax.random.bernoulli(k, keep, (c,))
  mask = jax.vmap(jax.vmap(row), in_axes=(None, 0))(jnp.asarray(depth_U), keys_RxU)
  return jnp.where(mask, x_RxUxC / keep, 0.0).astype(x_RxUxC.dtype)


def _gather_kv(kv_RxUx2xHxK: jax.Array, idx_RxJxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Keys and values `[R, J, T, H, K]` of the ancestor rows (per group), in one flat gather
  from a contiguous `[2, R*U, H, K]` (strided k / v slices gather several times slower)."""
  r, u = kv_RxUx2xHxK.shape[:2]
  kv_2xNxHxK = jnp.moveaxis(kv_RxUx2xHxK, 2, 0).reshape(2, r * u, *kv_RxUx2xHxK.shape[3:])
  flat = idx_RxJxT + (u * jnp.arange(r, dtype=idx_RxJxT.dtype))[:, None, None]
  kv = kv_2xNxHxK.at[:, flat].get(mode='promise_in_bounds')
  return kv[0], kv[1]


def _scatter_add_last(zeros: jax.Array, idx: jax.Array, upd: jax.Array) -> jax.Array:
  """`zeros[..., idx[..., t]] += upd[..., t]` along the last axis (the transpose of
  `take_along_axis`)."""
  lead = jnp.indices(idx.shape[:-1], sparse=True)
  lead = [jnp.expand_dims(a, -1) for a in lead]
  return zeros.at[(*lead, idx)].add(upd)


class TreeAttention(nn.Module):
  """Self-attention of tree rows over their ancestors (`PEAttention`'s parameters)."""

  num_heads: int
  dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_RxUxC: jax.Array, anc_RxJxT: jax.Array, valid_JxT: np.ndarray,
               depth_J: np.ndarray, keys_RxJ: jax.Array, deterministic: bool,
               ids_RxU: jax.Array | None = None) -> jax.Array:
    """Outputs of the last J rows (the queries), attending over their ancestor slots.

    With `ids_RxU`, `x` is a table `[V, C]` and row u of group r is `x[ids[r, u]]`: q/k/v
    are projected once per table row and attention runs in the table's domain
    (`_table_attention`: same values, no per-slot gather).
    """
    c = x_RxUxC.shape[-1]
    h = self.num_heads
    dh = c // h
    qkv = layers.Linear((3, h, dh), ('embed', None, 'heads', 'kv'), init_std=self.init_std,
                        dtype=self.dtype, param_dtype=self.param_dtype, name='qkv')
    j = anc_RxJxT.shape[1]
    mask = jnp.asarray(valid_JxT)[None, :, None, :]
    if ids_RxU is not None:  # x is the table: attention in the table's domain
      return self._table_attention(qkv(x_RxUxC), ids_RxU, anc_RxJxT, mask, depth_J, keys_RxJ,
                                   deterministic, c)
    if j < x_RxUxC.shape[1]:  # the last block: q of the CLS rows only
      q_RxJxHxK = qkv(x_RxUxC[:, -j:], part=slice(0, 1))[:, :, 0]
      kv_RxUx2xHxK = qkv(x_RxUxC, part=slice(1, 3))
    else:
      qkv_RxUx3xHxK = qkv(x_RxUxC)
      q_RxJxHxK, kv_RxUx2xHxK = qkv_RxUx3xHxK[:, -j:, 0], qkv_RxUx3xHxK[:, :, 1:]
    k_RxJxTxHxK, v_RxJxTxHxK = _gather_kv(kv_RxUx2xHxK, anc_RxJxT)
    logits = jnp.einsum('rjhk,rjthk->rjht', q_RxJxHxK, k_RxJxTxHxK,
                        preferred_element_type=jnp.float32) * dh**-0.5
    probs = self._probs(logits, mask, depth_J, keys_RxJ, deterministic)
    out = jnp.einsum('rjht,rjthk->rjhk', probs.astype(v_RxJxTxHxK.dtype), v_RxJxTxHxK)
    return self._out(out, c)

  def _probs(self, logits_RxJxHxT: jax.Array, mask: jax.Array, depth_J: np.ndarray,
             keys_RxJ: jax.Array, deterministic: bool) -> jax.Array:
    """Masked softmax over the ancestor slots, then (training) keyed dropout."""
    logits = jnp.where(mask, logits_RxJxHxT, layers.NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    if not deterministic and self.dropout_rate > 0.0:
      r, j, hh, t = probs.shape
      flat = probs.transpose(0, 1, 3, 2).reshape(r, j, t * hh)
      flat = keyed_dropout(flat, self.dropout_rate, self.make_rng('dropout'), depth_J, keys_RxJ)
      probs = flat.reshape(r, j, t, hh).transpose(0, 1, 3, 2)
    return probs

  def _table_attention(self, qkv_Vx3xHxK: jax.Array, ids_RxU: jax.Array,
                       anc_RxJxT: jax.Array, mask: jax.Array, depth_J: np.ndarray,
                       keys_RxJ: jax.Array, deterministic: bool, c: int) -> jax.Array:
    """Block 0: every row's q/k/v is a table row's, so q.k is a `[V, H, V]` product of the
    table with itself, looked up per (row, ancestor slot), and the weighted sum of values is
    `[J, V]` weights (the probabilities scattered onto the ancestors' table rows) times the
    table's values: no `[J, T, H, K]` gather of keys and values, no batched 1 x T dots."""
    v_rows, _, h, dh = qkv_Vx3xHxK.shape
    r, j, t = anc_RxJxT.shape
    q_VxHxK, k_VxHxK, v_VxHxK = (qkv_Vx3xHxK[:, i] for i in range(3))
    qk_VxHxV = jnp.einsum('ahk,bhk->ahb', q_VxHxK, k_VxHxK,
                          preferred_element_type=jnp.float32) * dh**-0.5
    ids_RxJ = ids_RxU[:, -j:]
    anc_ids_RxJxT = jnp.take_along_axis(ids_RxU, anc_RxJxT.reshape(r, -1), axis=1).reshape(
        r, j, t)
    qk_RxJxHxV = layers.onehot_lookup(qk_VxHxV.reshape(v_rows, -1), ids_RxJ).reshape(
        r, j, h, v_rows)
    sel_RxJxHxT = jnp.broadcast_to(anc_ids_RxJxT[:, :, None, :], (r, j, h, t))
    logits = jnp.take_along_axis(qk_RxJxHxV, sel_RxJxHxT, axis=-1)
    probs = self._probs(logits, mask, depth_J, keys_RxJ, deterministic)
    w_RxJxHxV = _scatter_add_last(jnp.zeros((r, j, h, v_rows), probs.dtype), sel_RxJxHxT,
                                  probs)
    out = jnp.einsum('rjhv,vhk->rjhk', w_RxJxHxV.astype(v_VxHxK.dtype), v_VxHxK)
    return self._out(out, c)

  def _out(self, out_RxJxHxK: jax.Array, c: int) -> jax.Array:
    return layers.Linear((c,), ('heads', 'kv', 'embed'), n_in=2, init_std=self.init_std,
                         dtype=self.dtype, param_dtype=self.param_dtype, name='out')(out_RxJxHxK)


class TreeBlock(nn.Module):
  """`transformer.Block` on tree rows (same parameter names and shapes)."""

  num_heads: int
  dropout_rate: float = 0.0
  attn_dropout_rate: float = 0.0
  last_query_only: bool = False  # only the CLS rows (the last Q rows) as queries
  num_queries: int = 0           # Q (with last_query_only)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_RxUxC: jax.Array, tree: Tree, layout: Layout, deterministic: bool,
               table: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """`table = (x_VxC, ids_RxU)` with `x_RxUxC == x_VxC[ids_RxU]`: attention projects the
    table's rows (`TreeAttention(ids_RxU=...)`); the residual stream stays per row."""
    ln = functools.partial(layers.LayerNorm, eps=1e-5, dtype=self.dtype,
                           param_dtype=self.param_dtype)
    depth_U, valid_UxT = layout.depth_U, layout.valid_UxT
    anc, keys = tree.anc_UxT, tree.keys_U
    if self.last_query_only:
      q = self.num_queries
      anc, keys, depth_U, valid_UxT = anc[:, -q:], keys[:, -q:], depth_U[-q:], valid_UxT[-q:]
    drop = lambda y: y if deterministic or self.dropout_rate <= 0.0 else keyed_dropout(
        y, self.dropout_rate, self.make_rng('dropout'), depth_U, keys)
    attn_in, ids = (x_RxUxC, None) if table is None else table
    h = TreeAttention(self.num_heads, self.attn_dropout_rate, dtype=self.dtype,
                      param_dtype=self.param_dtype, name='attn')(
                          ln(name='ln_1')(attn_in), anc, valid_UxT, depth_U, keys,
                          deterministic, ids)
    if self.last_query_only:
      x_RxUxC = x_RxUxC[:, -self.num_queries:]
    x_RxUxC = layers.constrain(x_RxUxC + drop(h), ('act_batch', None, 'act_embed'))
    h = layers.Mlp(4 * x_RxUxC.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                   name='mlp')(ln(name='ln_2')(x_RxUxC))
    return layers.constrain(x_RxUxC + drop(h), ('act_batch', None, 'act_embed'))


__all__ = ['Layout', 'Tree', 'depth_bounds', 'prefix_keys', 'build_tree', 'keyed_dropout',
           'TreeAttention', 'TreeBlock', 'MAX_KEY_DIGITS']
