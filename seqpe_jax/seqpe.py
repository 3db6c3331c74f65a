"""The SeqPE encoder: a tiny GPT-2 that reads a position's digits and emits its embedding.

Method doc §1–2. For a position `(p_0..p_{n-1})` with k digits per axis the
encoder input is `n*k` digit tokens plus a CLS token appended last:

    x_t = TokEmb[digit_t] + DigitPosEmb[t] + AxisEmb[t // k]   (t < n*k; AxisEmb iff n > 1)
    x_{n*k} = CLS

then `layers` pre-LN GPT-2 blocks (causal by default), a final LayerNorm, and
`out_proj(LN(h_CLS)) / temperature`. The encoder treats every position
independently, so any batch shape `[..., n]` is flattened, encoded and
reshaped back: it is vmapped over position sequences by construction, and the
embeddings of a whole length or grid are one call (cache them at evaluation).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from seqpe_jax import layers, prefix_trie, positions as pos_lib
from seqpe_jax.injection import PEContext
from seqpe_jax.transformer import Block

Dtype = Any


class SeqPEEncoder(nn.Module):
  """Maps int positions `[..., data_dim]` to float `[..., E]` (E = out_dim).

  Attributes:
    data_dim: number of position axes n (1 text, 2 images, 3 video/volumes).
    max_digits: digits per axis k; positions must lie in `[0, 10**k)`.
    width, num_heads, num_layers: the encoder transformer (paper: 768/12/2 text,
      384/6/2 vision).
    out_dim: output width (model width for `input_add`/multi-head `attn_*`).
    causal: causal digit attention (paper default); False = bidirectional.
    dropout_rate: residual/MLP dropout; attn_dropout_rate: attention-prob dropout.
    final_ln: final LayerNorm before `out_proj` (on in both paper configs).
    temperature: output is divided by it.
    mask_padding: drop leading-zero digits as attention keys (off in the paper).
    cls_only_last_layer: compute only the CLS row in the last block (same
      output, fewer FLOPs: the other rows are never read).
    base: the number base of the digit tokens.
    share_prefixes: training calls (`deterministic=False`) run on the digit-prefix
      tree (`prefix_trie.py`: each distinct prefix once, same function); needs
      `position_bound`, a causal encoder without `mask_padding`.
    position_bound: every coordinate of a training call lies in [0, bound) (the
      tree's static sizes; `aux.max_position`); 0: no tree.
  """

  data_dim: int = 1
  max_digits: int = 5
  width: int = 768
  num_heads: int = 12
  num_layers: int = 2
  out_dim: int = 768
  causal: bool = True
  dropout_rate: float = 0.1
  attn_dropout_rate: float = 0.0
  final_ln: bool = True
  temperature: float = 1.0
  mask_padding: bool = False
  cls_only_last_layer: bool = True
  base: int = 10
  share_prefixes: bool = False
  position_bound: int = 0
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def seq_len(self) -> int:
    return self.data_dim * self.max_digits + 1

  @nn.compact
  def __call__(self, positions: jax.Array, deterministic: bool = True) -> jax.Array:
    if positions.shape[-1] != self.data_dim:
      raise ValueError(f'SeqPEEncoder expects positions [..., {self.data_dim}], '
                       f'got shape {positions.shape}')
    batch_shape = positions.shape[:-1]
    pos_Mxn = positions.reshape(-1, self.data_dim)
    m = pos_Mxn.shape[0]
    pos_Mxn = _pad_to_batch_shards(pos_Mxn)
    digits_MxT = pos_lib.digitize(pos_Mxn, self.max_digits, self.base)
    if self.uses_tree(deterministic):
      h_MxD = self._tree_forward(digits_MxT, deterministic)
    else:
      h_MxD = self._plain_forward(pos_Mxn, digits_MxT, deterministic)
    if self.final_ln:
      h_MxD = layers.LayerNorm(1e-5, self.dtype, self.param_dtype, name='ln_f')(h_MxD)
    out_MxE = nn.Dense(
        self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.partitioned(layers.normal(self.init_std), ('embed', 'pe_out')),
        bias_init=layers.partitioned(nn.initializers.zeros, ('pe_out',)),
        name='out_proj')(h_MxD)
    if self.temperature != 1.0:
      out_MxE = out_MxE / self.temperature
    return out_MxE[:m].reshape(*batch_shape, self.out_dim)

  def uses_tree(self, deterministic: bool) -> bool:
    """Whether this call runs on the prefix tree (training calls, when it is exact)."""
    return (self.share_prefixes and not deterministic and self.position_bound > 0
            and self.causal and not self.mask_padding
            and self.data_dim * self.max_digits <= prefix_trie.MAX_KEY_DIGITS)

  def _embeddings(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(digit table [base, D], per-digit-slot vectors [T-1, D], CLS [D])`, compute dtype.

    The per-slot vector is the digit-position embedding plus the axis embedding (n > 1).
    """
    n_tok = self.data_dim * self.max_digits
    # The embedding tables are tiny (10 + k*n + n + 1 rows): replicated, never FSDP-sharded, so
    # the digit lookup stays local to the batch-sharded positions.
    init = layers.partitioned(layers.normal(self.init_std), (None, None))
    tok = self.param('token_embed', init, (self.base, self.width), self.param_dtype)
    dpos = self.param('digit_pos_embed', init, (n_tok, self.width), self.param_dtype)
    axis = None
    if self.data_dim > 1:
      axis = self.param('axis_embed', init, (self.data_dim, self.width), self.param_dtype)
      axis = jnp.asarray(axis, self.dtype)[pos_lib.axis_ids(self.data_dim, self.max_digits)]
    cls = self.param('cls_embed', layers.partitioned(layers.normal(self.init_std), (None,)),
                     (self.width,), self.param_dtype)
    dpos = jnp.asarray(dpos, self.dtype) + (0 if axis is None else axis)  # [T-1, D] per digit
    return jnp.asarray(tok, self.dtype), dpos, jnp.asarray(cls, self.dtype)

  def _tree_forward(self, digits_MxT: jax.Array, deterministic: bool) -> jax.Array:
    """CLS states `[M, D]` from the digit-prefix tree (`prefix_trie.py`)."""
    tok_emb, dpos_TxD, cls_D = self._embeddings()
    groups = _batch_shards()  # one tree per batch shard: gathers stay inside the shard
    m, t = digits_MxT.shape
    q = m // groups
    layout = prefix_trie.Layout(prefix_trie.depth_bounds(
        q, self.data_dim, self.max_digits, (self.position_bound,) * self.data_dim, self.base),
        q)
    digits_RxQxT = layers.constrain(digits_MxT.reshape(groups, q, t), ('act_batch', None, None))
    tree = jax.vmap(lambda d: prefix_trie.build_tree(d, layout, self.base))(digits_RxQxT)
    # A row's input is a function of its (depth, digit) (CLS rows: one constant): a row of the
    # t*base + 1 row table `x_VxD`, so block 0 computes q/k/v once per table row, not per row.
    x_VxD = jnp.concatenate([(dpos_TxD[:, None] + tok_emb[None]).reshape(-1, self.width),
                             cls_D[None]])
    depth_U = layout.depth_U[:layout.num_digit_rows]
    digit_ids_RxU = depth_U[None] * self.base + tree.tokens_U[:, :layout.num_digit_rows]
    ids_RxU = jnp.concatenate(
        [digit_ids_RxU, jnp.full((groups, q), x_VxD.shape[0] - 1, digit_ids_RxU.dtype)], axis=1)
    x_RxUxD = layers.constrain(layers.onehot_lookup(x_VxD, ids_RxU),
                               ('act_batch', None, 'act_embed'))
    for i in range(self.num_layers):
      last = self.cls_only_last_layer and i == self.num_layers - 1
      x_RxUxD = prefix_trie.TreeBlock(
          self.num_heads, dropout_rate=self.dropout_rate,
          attn_dropout_rate=self.attn_dropout_rate, last_query_only=last, num_queries=q,
          dtype=self.dtype, param_dtype=self.param_dtype,
          name=f'block_{i}')(x_RxUxD, tree, layout, deterministic,
                             table=(x_VxD, ids_RxU) if i == 0 else None)
    return x_RxUxD[:, -q:].reshape(m, self.width)

  def _plain_forward(self, pos_Mxn: jax.Array, digits_MxT: jax.Array,
                     deterministic: bool) -> jax.Array:
    """CLS states `[M, D]` from the `[M, T]` digit sequences."""
    tok_emb, dpos_TxD, cls_D = self._embeddings()
    x_MxTxD = layers.onehot_lookup(tok_emb, digits_MxT) + dpos_TxD[None]
    cls_Mx1xD = jnp.broadcast_to(cls_D, (x_MxTxD.shape[0], 1, self.width))
    x_MxTxD = jnp.concatenate([x_MxTxD, cls_Mx1xD], axis=1)  # CLS last (T = n*k + 1)
    x_MxTxD = layers.constrain(x_MxTxD, ('act_batch', None, 'act_embed'))

    mask_Mx1xT = None
    if self.mask_padding:  # leading zeros stop being keys; the CLS column always stays
      pad_MxT = pos_lib.pad_mask(pos_Mxn, self.max_digits, self.base)
      mask_Mx1xT = jnp.concatenate([pad_MxT, jnp.ones_like(pad_MxT[:, :1])], axis=1)[:, None]

    for i in range(self.num_layers):
      last = self.cls_only_last_layer and i == self.num_layers - 1
      x_MxTxD = Block(
          self.num_heads, causal=self.causal, dropout_rate=self.dropout_rate,
          attn_dropout_rate=self.attn_dropout_rate, ln_eps=1e-5, last_query_only=last,
          dtype=self.dtype, param_dtype=self.param_dtype,
          name=f'block_{i}')(x_MxTxD, PEContext(), mask_Mx1xT, deterministic)
    return x_MxTxD[:, -1]


def _batch_shards() -> int:
  """The mesh's batch shards ('data' x 'fsdp'; 1 outside a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  shards = 1
  for axis in ('data', 'fsdp'):
    if not mesh.empty and axis in mesh.axis_names:
      shards *= mesh.shape[axis]
  return shards


def _pad_to_batch_shards(pos_Mxn: jax.Array) -> jax.Array:
  """Pads the position batch to a multiple of the mesh's batch shards (zeros, dropped after).

  The encoder's position batch is sharded over ('data', 'fsdp'); an uneven count would make
  XLA replicate and re-split it.
  """
  pad = -pos_Mxn.shape[0] % _batch_shards()
  return jnp.pad(pos_Mxn, ((0, pad), (0, 0))) if pad else pos_Mxn


def num_params(variables) -> int:
  """Total parameter count of a variables/params tree."""
  return int(optax.tree_utils.tree_size(nn.meta.unbox(variables)))
