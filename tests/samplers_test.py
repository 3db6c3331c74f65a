"""Tests for seqpe_jax.samplers (method doc §4-6)."""

import functools
import itertools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import positions as pos_lib
from seqpe_jax import samplers

CC = samplers.ContrastiveConfig

# (cfg, max_position, data_dim, max_digits): small settings where ties,
# duplicates and pivots inside windows are common, plus the two paper settings.
_MIXED = (1 / 3, 1 / 3, 1 / 3)
SETTINGS = {
    '1d_small': (CC(8, 8, _MIXED, 0.25, 12), 60, 1, 2),
    '2d_small': (CC(8, 10, _MIXED, 0.3, 3), 12, 2, 2),  # 3x3 window < K cells
    '3d_small': (CC(8, 12, _MIXED, 0.25, 3), 5, 3, 1),
    'text': (CC.official_text(), 20000, 1, 5),
    'vision': (CC.official_vision(), 100, 2, 2),
}


@functools.lru_cache(maxsize=None)
def _contrastive(cfg, p, d, m, jit=True):
  if jit:
    return jax.jit(_contrastive(cfg, p, d, m, jit=False))
  return functools.partial(samplers.contrastive_batch, cfg=cfg, max_position=p, data_dim=d,
                           max_digits=m)


@functools.lru_cache(maxsize=None)
def _lists(cfg, p, d, m):
  return jax.jit(functools.partial(samplers._candidate_lists, cfg=cfg, max_position=p,
                                   data_dim=d, max_digits=m))


_merge = jax.jit(samplers._merge, static_argnames='k')


def _np(*xs):
  return [np.asarray(x) for x in xs]


def _concat_str(pos):
  """Official 2-D string: unpadded axes concatenated, read as an int."""
  return str(int(''.join(str(int(v)) for v in pos)))


def _levenshtein(a: str, b: str) -> int:
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def _is_split_of(s: str, coords, m: int) -> bool:
  """Whether `coords` come from s (zero-padded to d digits) cut into 1..m-digit parts."""
  d = len(coords)
  pads = range(max(d - len(s), 0) + 1)
  for left in pads:
    t = '0' * left + s + '0' * (max(d - len(s), 0) - left)
    for lens in itertools.product(range(1, m + 1), repeat=d):
      if sum(lens) != len(t):
        continue
      cuts = np.cumsum((0,) + lens)
      if all(int(t[cuts[a]:cuts[a + 1]]) == coords[a] for a in range(d)):
        return True
  return False


class SampleWithoutReplacementTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_distinct_and_in_range(self):
    fn = functools.partial(samplers.sample_without_replacement, n=20, k=7, shape=(50, 2))
    out = self.variant(fn)(jax.random.key(0))
    np.testing.assert_array_equal(out, jax.jit(fn)(jax.random.key(0)))  # jit == eager
    chex.assert_shape(out, (50, 2, 7))
    chex.assert_type(out, jnp.int32)
    out = np.asarray(out).reshape(-1, 7)
    self.assertTrue(((out >= 0) & (out < 20)).all())
    self.assertTrue(all(len(set(row)) == 7 for row in out))

  def test_k_equals_n_gives_permutations(self):
    out = np.asarray(samplers.sample_without_replacement(jax.random.key(1), 6, 6, (30,)))
    np.testing.assert_array_equal(np.sort(out, -1), np.tile(np.arange(6), (30, 1)))
    self.assertGreater(len({tuple(r) for r in out}), 20)

  def test_roughly_uniform_values_and_order(self):
    n, k, draws = 10, 3, 4000
    out = np.asarray(samplers.sample_without_replacement(jax.random.key(2), n, k, (draws,)))
    expected = draws * k / n
    chi2 = ((np.bincount(out.ravel(), minlength=n) - expected)**2 / expected).sum()
    self.assertLess(chi2, 35.0)  # 9 dof: P(chi2 > 35) ~ 6e-5
    # Each slot is uniform too: Floyd's raw order puts large values last.
    for slot in range(k):
      counts = np.bincount(out[:, slot], minlength=n)
      self.assertLess(((counts - draws / n)**2 / (draws / n)).sum(), 35.0)

  def test_k_larger_than_n_raises(self):
    with self.assertRaises(ValueError):
      samplers.sample_without_replacement(jax.random.key(0), 4, 5)

  def test_deterministic(self):
    f = jax.jit(functools.partial(samplers.sample_without_replacement, n=1000, k=16, shape=(4,)))
    a, b, c = _np(f(jax.random.key(3)), f(jax.random.key(3)), f(jax.random.key(4)))
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, c))


class ContrastiveTest(chex.TestCase):

  def _check(self, cfg, p, d, m, key):
    """Checks one batch built from the unmerged lists; returns them and the candidates."""
    b, k, n_hard = cfg.num_pivots, cfg.num_candidates, cfg.num_hard
    lists = _lists(cfg, p, d, m)(key)
    cands = _merge(*lists[:1], *lists[2:], k=k)
    labels = samplers.nearest_label(lists[0], cands)
    chex.assert_shape([lists[0], cands, labels], [(b, d), (b, k, d), (b,)])
    chex.assert_type([lists[0], cands, labels], jnp.int32)
    (pivots, mode, special, special_ok, simple), cands, labels = _np(*lists), *_np(cands, labels)
    self.assertTrue(((pivots >= 0) & (pivots < p)).all())
    self.assertTrue(((cands >= 0) & (cands < p)).all())
    self.assertLess(cands.max(), pos_lib.capacity(m))
    w = min(cfg.window, p)
    for i in range(b):
      rows = {tuple(c) for c in cands[i]}
      self.assertLen(rows, k, 'candidates must be distinct')
      self.assertNotIn(tuple(pivots[i]), rows)
      dist = ((cands[i].astype(np.int64) - pivots[i])**2).sum(-1)
      self.assertEqual(labels[i], np.argmin(dist))  # numpy argmin: ties -> first
      kept = special[i][special_ok[i]]
      simple_set = {tuple(c) for c in simple[i]}
      self.assertLen(simple_set, k + 1)
      if mode[i] == 0:
        self.assertEmpty(kept)
      elif mode[i] == 1:  # hard negatives: farther than the nearest early simple candidate
        self.assertFalse(special_ok[i, n_hard:].any())
        min_simple = ((simple[i, :k + 1 - n_hard] - pivots[i])**2).sum(-1).min()
        for c in cands[i]:
          if tuple(c) not in simple_set:
            self.assertIn(tuple(c), {tuple(h) for h in kept})
            self.assertGreater(((c - pivots[i])**2).sum(), min_simple)
      else:  # window: min(K, w^d) distinct cells of one w^d window, merged first
        n_cells = min(k, w**d)
        self.assertLen({tuple(c) for c in kept}, n_cells)
        self.assertTrue((kept.max(0) - kept.min(0) < w).all())
        head = cands[i, :n_cells - 1]  # the pivot may be one of the cells
        self.assertTrue((head.max(0) - head.min(0) < w).all())
    return (pivots, mode, special, special_ok, simple), cands

  @parameterized.named_parameters(*[(name, name) for name in SETTINGS])
  def test_invariants(self, name):
    cfg, p, d, m = SETTINGS[name]
    modes = set()
    for seed in range(2):
      (_, mode, *_), _ = self._check(cfg, p, d, m, jax.random.key(seed))
      modes |= set(mode.tolist())
    self.assertEqual(modes, {i for i in range(3) if cfg.mode_probs[i] > 0})

  def test_batch_is_merged_lists(self):
    cfg, p, d, m = SETTINGS['text']
    key = jax.random.key(12)
    pivots, cands, labels = _np(*_contrastive(cfg, p, d, m)(key))
    lists = _np(*_lists(cfg, p, d, m)(key))
    np.testing.assert_array_equal(pivots, lists[0])
    merged = np.asarray(_merge(lists[0], *lists[2:], k=cfg.num_candidates))
    np.testing.assert_array_equal(cands, merged)
    np.testing.assert_array_equal(labels, samplers.nearest_label(pivots, merged))
    # Merge order: surviving specials first, then the simple list, in order.
    for i in range(cfg.num_pivots):
      special = [tuple(c) for c, ok in zip(lists[2][i], lists[3][i]) if ok]
      want = [c for c in dict.fromkeys(special + [tuple(c) for c in lists[4][i]])
              if c != tuple(pivots[i])][:cfg.num_candidates]
      self.assertEqual([tuple(c) for c in cands[i]], want)

  def test_jit_and_eager_agree(self):
    # A plain test rather than chex.variants: the jitted text sampler is already
    # compiled by the tests above, and eager execution is the slow part.
    key = jax.random.key(5)
    eager = _contrastive(*SETTINGS['text'], jit=False)(key)
    for got, want in zip(eager, _contrastive(*SETTINGS['text'])(key)):
      np.testing.assert_array_equal(got, want)

  def test_deterministic(self):
    f = _contrastive(*SETTINGS['text'])
    a, b, c = f(jax.random.key(6)), f(jax.random.key(6)), f(jax.random.key(7))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    self.assertFalse(np.array_equal(a[1], c[1]))

  @parameterized.named_parameters(('1d', 20000, 1, 5, 32), ('2d', 100, 2, 2, 64))
  def test_forced_hard_negatives(self, p, d, m, k):
    cfg = CC(16, k, (0.0, 1.0, 0.0), 0.25, 8)
    (pivots, mode, _, special_ok, simple), cands = self._check(cfg, p, d, m, jax.random.key(8))
    self.assertTrue((mode == 1).all())
    self.assertGreater(special_ok.sum(), cfg.num_pivots)
    n_hard_kept = 0
    for i in range(cfg.num_pivots):
      for c in cands[i]:
        if tuple(c) in {tuple(s) for s in simple[i]}:
          continue
        n_hard_kept += 1
        if d == 1:  # 1-3 edits of the digit string (a swap costs 2)
          self.assertBetween(_levenshtein(str(c[0]), str(pivots[i, 0])), 1, 6)
    self.assertGreater(n_hard_kept, 0)

  @parameterized.named_parameters(('1d', 20000, 1, 5), ('2d', 100, 2, 2),
                                  ('2d_below_capacity', 50, 2, 2), ('3d', 10, 3, 1))
  def test_hard_negatives_are_digit_edits(self, p, d, m):
    pivots = jax.random.randint(jax.random.key(9), (24, d), 0, p).at[0].set(0)
    fn = jax.jit(functools.partial(samplers._hard_negatives, num=8, max_position=p,
                                   max_digits=m))
    hard, valid, digits, length = _np(*fn(jax.random.key(10), pivots))
    self.assertGreater(valid.mean(), 0.5)
    for i, j in zip(*np.nonzero(valid)):
      s = ''.join(str(v) for v in digits[i, j, :length[i, j]])
      piv = _concat_str(np.asarray(pivots[i]))
      self.assertTrue(s == '0' or s[0] != '0', f'leading zero in {s}')
      self.assertLessEqual(len(s), d * m)
      self.assertBetween(_levenshtein(s, piv), 1, 6)  # 1-3 edits, a swap costs 2
      self.assertTrue(_is_split_of(s, tuple(hard[i, j]), m), (s, hard[i, j]))
      self.assertNotEqual(tuple(hard[i, j]), tuple(np.asarray(pivots[i])))
      self.assertTrue((hard[i, j] < p).all())

  def test_digit_string(self):
    fn = jax.jit(samplers._digit_string, static_argnums=1)
    buf, n = _np(*fn(jnp.array([[12, 3], [0, 5], [0, 0], [7, 40]]), 2))
    got = [''.join(map(str, r[:k])) for r, k in zip(buf, n)]
    self.assertEqual(got, ['123', '5', '0', '740'])
    buf, n = _np(*fn(jnp.array([[1234], [0]]), 5))
    self.assertEqual([''.join(map(str, r[:k])) for r, k in zip(buf, n)], ['1234', '0'])

  def test_nearest_label_examples(self):
    self.assertEqual(int(samplers.nearest_label(jnp.array([6, 7]),
                                                jnp.array([[3, 4], [6, 70], [5, 5]]))), 2)
    # Ties -> first index (6 and 4 are both at distance 1).
    self.assertEqual(int(samplers.nearest_label(jnp.array([5]),
                                                jnp.array([[3], [7], [6], [4]]))), 2)
    labels = samplers.nearest_label(jnp.array([[0], [9]]), jnp.array([[[5], [1]], [[8], [2]]]))
    np.testing.assert_array_equal(labels, [1, 0])

  def test_official_configs(self):
    text = CC.official_text()
    self.assertEqual((text.num_pivots, text.num_candidates, text.window, text.num_hard),
                     (16, 32, 256, 8))
    self.assertEqual((text.mode_probs, text.hard_ratio), ((0.0, 0.4, 0.6), 0.25))
    self.assertEqual(CC.official_text(num_candidates=64).window, 320)
    vision = CC.official_vision()
    self.assertEqual((vision.num_pivots, vision.num_candidates, vision.window, vision.num_hard),
                     (32, 64, 17, 12))
    self.assertEqual((vision.mode_probs, vision.hard_ratio), ((0.5, 0.3, 0.2), 0.2))
    self.assertEqual(CC.official_vision(train_grid=(20, 20)).window, 20)

  def test_invalid_settings_raise(self):
    with self.assertRaises(ValueError):  # 3^2 = 9 < K + 2
      samplers.contrastive_batch(jax.random.key(0), CC(2, 8), max_position=3, data_dim=2,
                                 max_digits=1)
    with self.assertRaises(ValueError):  # positions up to 199 need 3 digits
      samplers.contrastive_batch(jax.random.key(0), CC(2, 8), max_position=200, data_dim=1,
                                 max_digits=2)
    with self.assertRaises(ValueError):
      CC(mode_probs=(0.5, 0.5, 0.5))


class OODTest(chex.TestCase):

  def _check(self, cfg, grid, p, seed=0):
    teacher, students = _np(*jax.jit(functools.partial(
        samplers.ood_batch, cfg=cfg, train_grid=grid, max_position=p))(jax.random.key(seed)))
    d, n = len(grid), int(np.prod(grid))
    chex.assert_shape([teacher, students], [(cfg.num_items, cfg.num_points),
                                            (cfg.num_items, cfg.num_points, d)])
    self.assertTrue(((teacher >= 0) & (teacher < n)).all())
    self.assertTrue(all(len(set(row)) == cfg.num_points for row in teacher))
    coords = np.stack(np.unravel_index(teacher, grid), -1)
    offsets = students - coords
    np.testing.assert_array_equal(offsets, np.broadcast_to(offsets[:, :1], offsets.shape))
    self.assertTrue(((students >= 0) & (students < p)).all())
    self.assertLess(students.max(), pos_lib.capacity(pos_lib.digits_needed(p - 1)))
    return teacher, students, offsets[:, 0]

  def test_1d_default_is_fully_out_of_range(self):
    _, students, offsets = self._check(samplers.OODConfig.official_text(), (512,), 20000)
    self.assertTrue((students >= 512).all())
    self.assertTrue(((offsets >= 512) & (offsets <= 20000 - 512)).all())
    _, _, offsets = self._check(samplers.OODConfig(300, 4), (16,), 40)
    self.assertEqual((offsets.min(), offsets.max()), (16, 24))  # 300 draws cover [L, P-L]

  def test_1d_official_min_offset(self):
    _, _, offsets = self._check(samplers.OODConfig(300, 4, min_offset=4), (16,), 40)
    self.assertEqual((offsets.min(), offsets.max()), (4, 24))  # 300 draws cover [4, 24]

  @parameterized.named_parameters(('2d', samplers.OODConfig.official_vision(), (14, 14), 100),
                                  ('3d', samplers.OODConfig(16, 5), (2, 3, 2), 6))
  def test_nd_out_of_distribution(self, cfg, grid, p):
    _, students, offsets = self._check(cfg, grid, p)
    self.assertTrue((students >= np.asarray(grid)).any(-1).all())
    self.assertTrue((offsets <= p - np.asarray(grid)).all())

  def test_2d_offsets_exactly_uniform(self):
    cfg = samplers.OODConfig(6000, 1)
    _, _, offsets = self._check(cfg, (2, 2), 5)
    cells = [(a, b) for a in range(4) for b in range(4) if a >= 2 or b >= 2]
    counts = np.array([np.sum((offsets == c).all(-1)) for c in cells])
    self.assertEqual(counts.sum(), 6000)  # nothing outside the 12 valid offsets
    chi2 = ((counts - 500)**2 / 500).sum()
    self.assertLess(chi2, 40.0)  # 11 dof: P(chi2 > 40) ~ 4e-5

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree(self):
    fn = functools.partial(samplers.ood_batch, cfg=samplers.OODConfig(4, 8), train_grid=(14, 14),
                           max_position=100)
    for got, want in zip(self.variant(fn)(jax.random.key(1)), jax.jit(fn)(jax.random.key(1))):
      np.testing.assert_array_equal(got, want)

  def test_invalid_ranges_raise(self):
    key = jax.random.key(0)
    with self.assertRaises(ValueError):
      samplers.ood_batch(key, samplers.OODConfig(2, 4, min_offset=30), train_grid=(16,),
                         max_position=40)
    with self.assertRaises(ValueError):  # no offset moves a 14x14 grid off itself within 20
      samplers.ood_batch(key, samplers.OODConfig(2, 4), train_grid=(14, 14), max_position=20)
    with self.assertRaises(ValueError):
      samplers.ood_batch(key, samplers.OODConfig(2, 40), train_grid=(4, 4), max_position=20)

  def test_figure1_translation(self):
    grid = np.asarray(samplers.shifted_grid(jnp.array([[0, 0], [10, 20]]), (14, 14)))
    np.testing.assert_array_equal(grid[0, 15], [1, 1])
    np.testing.assert_array_equal(grid[1, 15], [11, 21])


class RandomShiftTest(chex.TestCase):

  def test_pool_1d_all_offsets(self):
    pool = samplers.make_shift_pool(0, train_grid=(512,), max_position=20000, pool_size=0)
    self.assertEqual(pool.shape, (19489, 1))
    np.testing.assert_array_equal(np.sort(pool[:, 0]), np.arange(19489))

  def test_pool_2d(self):
    pool = samplers.make_shift_pool(1, train_grid=(14, 14), max_position=100)
    self.assertEqual((pool.shape, pool.dtype), ((320, 2), np.int32))
    self.assertLen({tuple(r) for r in pool}, 320)
    self.assertTrue(((pool >= 0) & (pool <= 86)).all())
    again = samplers.make_shift_pool(1, train_grid=(14, 14), max_position=100)
    other = samplers.make_shift_pool(2, train_grid=(14, 14), max_position=100)
    np.testing.assert_array_equal(pool, again)
    self.assertFalse(np.array_equal(pool, other))
    full = samplers.make_shift_pool(1, train_grid=(14, 14), max_position=100, pool_size=10**6)
    self.assertEqual(full.shape, (87 * 87, 2))

  @chex.variants(with_jit=True, without_jit=True)
  def test_shift_offsets_and_grid(self):
    pool = jnp.asarray(samplers.make_shift_pool(3, train_grid=(3, 4), max_position=10,
                                                pool_size=5))
    fn = self.variant(lambda key: samplers.shifted_grid(
        samplers.shift_offsets(key, pool, 16), (3, 4)))
    grids = np.asarray(fn(jax.random.key(0)))
    chex.assert_shape(grids, (16, 12, 2))
    base = np.stack(np.unravel_index(np.arange(12), (3, 4)), -1)  # row-major
    offsets = grids[:, 0]
    np.testing.assert_array_equal(grids, base[None] + offsets[:, None])
    pool_rows = {tuple(r) for r in np.asarray(pool)}
    self.assertTrue(all(tuple(o) in pool_rows for o in offsets))

  def test_use_shift_rate(self):
    keys = jax.random.split(jax.random.key(0), 4000)
    rate = float(jnp.mean(jax.vmap(lambda k: samplers.use_shift(k, 0.1))(keys)))
    self.assertAlmostEqual(rate, 0.1, delta=0.025)


if __name__ == '__main__':
  absltest.main()
