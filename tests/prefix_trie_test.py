"""Tests for seqpe_jax.prefix_trie (the SeqPE encoder over the digit-prefix tree)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from configs import common
from seqpe_jax import layers, positions as pos_lib, prefix_trie, seqpe, sharding


def _enc(share: bool, bound: int = 2560, **kw):
  args = dict(data_dim=1, max_digits=4, width=32, num_heads=2, num_layers=2, out_dim=16,
              dropout_rate=0.0, share_prefixes=share, position_bound=bound)
  args.update(kw)
  return seqpe.SeqPEEncoder(**args)


def _positions(rng, n, bound, data_dim=1):
  """Random positions with duplicates, the corners and a contiguous run."""
  rand = rng.integers(0, bound, (n, data_dim))
  run = np.stack([np.arange(40) % bound] * data_dim, axis=1)
  corners = np.array([[0] * data_dim, [bound - 1] * data_dim, [0] * data_dim])
  return np.concatenate([run, rand, rand[:7], corners]).astype(np.int32)


class LayoutTest(parameterized.TestCase):

  def test_depth_bounds(self):
    # Text recipe: 5 digits, positions < 20,000; 1552 positions per shard.
    self.assertEqual(prefix_trie.depth_bounds(1552, 1, 5, (20000,)), (2, 20, 200, 1552, 1552))
    # Few positions bound every depth; the capacity 10**(t+1) bounds the first ones.
    self.assertEqual(prefix_trie.depth_bounds(64, 1, 4, (10000,)), (10, 64, 64, 64))
    # 2-D, 2 digits per axis, a 100 x 37 range: row prefix, row, row + col prefix, all.
    self.assertEqual(prefix_trie.depth_bounds(5000, 2, 2, (100, 37)), (10, 100, 400, 3700))

  def test_tree_rows_spell_their_prefixes(self):
    rng = np.random.default_rng(0)
    pos = _positions(rng, 300, 2560)
    digits = pos_lib.digitize(pos, 4)
    q = pos.shape[0]
    layout = prefix_trie.Layout(prefix_trie.depth_bounds(q, 1, 4, (2560,)), q)
    tree = jax.device_get(prefix_trie.build_tree(digits, layout))
    keys, anc, tok = tree.keys_U, tree.anc_UxT, tree.tokens_U
    depth, valid = layout.depth_U, layout.valid_UxT
    offs = layout.offsets + (layout.num_digit_rows,)
    for t, bound in enumerate(layout.bounds):
      rows = np.arange(offs[t], offs[t] + bound)
      distinct = len({int(p) // 10 ** (3 - t) for p in pos[:, 0]})
      real = rows[:distinct]  # nodes are numbered first; the rest are padding slots
      np.testing.assert_array_equal(np.sort(keys[real]),
                                    sorted({int(p) // 10 ** (3 - t) for p in pos[:, 0]}))
      np.testing.assert_array_equal(tok[real], keys[real] % 10)
      for r in real:
        for s in range(t + 1):  # ancestor s is this prefix's first s+1 digits, at depth s
          a = anc[r, s]
          self.assertEqual(depth[a], s)
          self.assertEqual(keys[a], keys[r] // 10 ** (t - s))
        self.assertTrue(valid[r, :t + 1].all() and not valid[r, t + 1:].any())
    cls = np.arange(offs[-1], offs[-1] + q)
    np.testing.assert_array_equal(keys[cls], pos[:, 0])  # one CLS row per position, in order
    for m, r in enumerate(cls):
      np.testing.assert_array_equal(keys[anc[r, :4]], [pos[m, 0] // 10 ** (3 - s)
                                                       for s in range(4)])
      self.assertEqual(anc[r, 4], r)


class TreeEncoderTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters((1, 4, 2560, 1), (1, 5, 20000, 2), (2, 2, 100, 2), (2, 2, 37, 1))
  def test_same_function_and_gradients_as_plain(self, data_dim, digits, bound, layers):
    pos = _positions(np.random.default_rng(1), 200, bound, data_dim)
    kw = dict(data_dim=data_dim, max_digits=digits, num_layers=layers, bound=bound)
    plain, tree = _enc(False, **kw), _enc(True, **kw)
    self.assertTrue(tree.uses_tree(deterministic=False))
    self.assertFalse(tree.uses_tree(deterministic=True))  # evaluation: the plain layout
    params = plain.init(jax.random.PRNGKey(0), pos)
    f = lambda enc: jax.jit(lambda p: enc.apply(p, pos, deterministic=False))
    np.testing.assert_allclose(f(tree)(params), f(plain)(params), atol=2e-6)
    loss = lambda enc: jax.jit(jax.grad(lambda p: jnp.sum(
        jnp.sin(enc.apply(p, pos, deterministic=False)))))
    for g_tree, g_plain in zip(jax.tree.leaves(loss(tree)(params)),
                               jax.tree.leaves(loss(plain)(params))):
      scale = float(jnp.abs(g_plain).max()) + 1e-12  # fp32 rounding relative to the leaf
      self.assertLess(float(jnp.abs(g_tree - g_plain).max()) / scale, 2e-5)

  def test_one_tree_per_batch_shard_gives_the_same_result(self):
    pos = _positions(np.random.default_rng(2), 301, 2560)  # 348 rows: padded to the shards
    enc = _enc(True, dropout_rate=0.2, attn_dropout_rate=0.1)
    params = enc.init(jax.random.PRNGKey(0), pos)
    run = lambda p: enc.apply(p, pos, deterministic=False, rngs={'dropout': jax.random.PRNGKey(5)})
    one = jax.jit(run)(params)
    mesh = sharding.make_mesh(common.mesh_config(data=4), jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      four = jax.jit(run)(params)  # four groups, four trees
    np.testing.assert_allclose(four, one, atol=2e-6)

  def test_dropout_is_one_mask_per_prefix(self):
    pos = np.array([[123], [123], [124], [2000]], np.int32)
    enc = _enc(True, dropout_rate=0.5)
    params = enc.init(jax.random.PRNGKey(0), pos)
    out = enc.apply(params, pos, deterministic=False, rngs={'dropout': jax.random.PRNGKey(3)})
    np.testing.assert_array_equal(out[0], out[1])  # the same position: the same draws
    det = enc.apply(params, pos)
    self.assertGreater(float(jnp.abs(out - det).max()), 1e-3)  # dropout is on
    other = enc.apply(params, pos, deterministic=False, rngs={'dropout': jax.random.PRNGKey(4)})
    self.assertGreater(float(jnp.abs(out - other).max()), 1e-3)  # and drawn from the key

  def test_keyed_dropout_keeps_the_mean_and_shares_masks(self):
    x = jnp.ones((1, 4, 4000))
    depth, keys = np.array([0, 0, 1, 1]), jnp.array([[7, 7, 7, 8]])
    y = prefix_trie.keyed_dropout(x, 0.25, jax.random.PRNGKey(0), depth, keys)
    np.testing.assert_array_equal(y[0, 0], y[0, 1])  # same (depth, key)
    self.assertFalse(np.array_equal(y[0, 1], y[0, 2]))  # same key, other depth
    self.assertFalse(np.array_equal(y[0, 2], y[0, 3]))
    np.testing.assert_allclose(float(y.mean()), 1.0, atol=0.03)
    self.assertAlmostEqual(float((y == 0).mean()), 0.25, delta=0.02)

  @parameterized.parameters(0.0, 0.3)
  def test_table_attention_equals_attention_on_the_looked_up_rows(self, attn_dropout):
    # Block 0 attends in its table's domain (q.k of table rows looked up per ancestor slot,
    # the probabilities scattered onto table rows times the table's values); the same module
    # on the looked-up rows gathers keys and values per slot. Same values and gradients,
    # attention dropout included (its masks are keyed by depth and prefix, not by layout).
    pos = _positions(np.random.default_rng(3), 150, 2560)
    q = pos.shape[0]
    layout = prefix_trie.Layout(prefix_trie.depth_bounds(q, 1, 4, (2560,)), q)
    tree = jax.tree.map(lambda a: a[None], prefix_trie.build_tree(pos_lib.digitize(pos, 4),
                                                                  layout))
    n_digit = layout.num_digit_rows
    v = 4 * 10 + 1
    ids = jnp.concatenate([layout.depth_U[None, :n_digit] * 10 + tree.tokens_U[:, :n_digit],
                           jnp.full((1, q), v - 1, jnp.int32)], axis=1)
    x_VxC = jax.random.normal(jax.random.PRNGKey(1), (v, 32))
    attn = prefix_trie.TreeAttention(num_heads=2, dropout_rate=attn_dropout)
    args = (tree.anc_UxT, layout.valid_UxT, layout.depth_U, tree.keys_U, False)
    rngs = {'dropout': jax.random.PRNGKey(7)}
    params = attn.init({'params': jax.random.PRNGKey(0), **rngs}, x_VxC, *args, ids)
    w = jax.random.normal(jax.random.PRNGKey(2), (1, layout.num_rows, 32))
    table = lambda p, x: jnp.sum(jnp.sin(attn.apply(p, x, *args, ids, rngs=rngs)) * w)
    rows = lambda p, x: jnp.sum(jnp.sin(attn.apply(
        p, layers.onehot_lookup(x, ids), *args, rngs=rngs)) * w)
    (lt, gt), (lr, gr) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x_VxC)
                          for f in (table, rows))
    np.testing.assert_allclose(lt, lr, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gt), jax.tree.leaves(gr)):
      scale = float(jnp.abs(b).max()) + 1e-12
      self.assertLess(float(jnp.abs(a - b).max()) / scale, 2e-5)

  @parameterized.named_parameters(
      ('bidirectional', dict(causal=False)), ('mask_padding', dict(mask_padding=True)),
      ('no_bound', dict(bound=0)), ('keys_too_long', dict(data_dim=2, max_digits=5)))
  def test_falls_back_to_the_plain_layout(self, kw):
    self.assertFalse(_enc(True, **kw).uses_tree(deterministic=False))


if __name__ == '__main__':
  absltest.main()
