"""Tests for seqpe_jax.data.common: paths, text reading, atomic caches, sharding."""

import bz2
import gzip
import lzma
import os
import pathlib
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import grain
import numpy as np

from seqpe_jax.data import common
from seqpe_jax.errors import DataError

_TEXT = ' = Title = \n\n Some text , with <unk> and ünïcödé 日本 .\n'


class CommonTestBase(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))

  def assertOneLineDataError(self, fn, *needles):
    with self.assertRaises(DataError) as ctx:
      fn()
    message = str(ctx.exception)
    self.assertNotIn('\n', message)
    for needle in needles:
      self.assertIn(str(needle), message)


class DirsTest(CommonTestBase):

  def test_configured_data_dir_wins(self):
    with mock.patch.dict(os.environ, {common.DATA_DIR_ENV: '/nonexistent'}):
      self.assertEqual(common.resolve_data_dir(str(self.tmp)), self.tmp)

  def test_env_data_dir(self):
    with mock.patch.dict(os.environ, {common.DATA_DIR_ENV: str(self.tmp)}):
      self.assertEqual(common.resolve_data_dir(''), self.tmp)

  def test_default_data_dir_is_next_to_repo(self):
    repo = pathlib.Path(common.__file__).resolve().parents[2]
    self.assertEqual(common.default_data_dir(), repo.parent / 'shared' / 'data')

  def test_missing_data_dir_is_one_line_error(self):
    missing = self.tmp / 'nope'
    self.assertOneLineDataError(lambda: common.resolve_data_dir(str(missing)),
                                missing, common.DATA_DIR_ENV)

  def test_cache_dir_created(self):
    target = self.tmp / 'a' / 'cache'
    self.assertEqual(common.resolve_cache_dir(str(target)), target)
    self.assertTrue(target.is_dir())
    with mock.patch.dict(os.environ, {common.CACHE_DIR_ENV: str(self.tmp / 'env')}):
      self.assertEqual(common.resolve_cache_dir(''), self.tmp / 'env')


class OpenTextTest(CommonTestBase):

  @parameterized.parameters(('', open), ('.xz', lzma.open), ('.gz', gzip.open),
                            ('.bz2', bz2.open))
  def test_reads_compressed(self, suffix, opener):
    path = self.tmp / f'f.txt{suffix}'
    with opener(path, 'wb') as f:
      f.write(_TEXT.encode('utf-8'))
    self.assertEqual(common.open_text(path), _TEXT)

  def test_chunks_are_line_aligned_and_lossless(self):
    path = self.tmp / 'f.txt'
    path.write_text(_TEXT * 50, encoding='utf-8')
    chunks = list(common.iter_text_chunks(path, chunk_chars=7))
    self.assertEqual(''.join(chunks), _TEXT * 50)
    self.assertTrue(all(c.endswith('\n') for c in chunks))

  def test_crlf_kept(self):
    path = self.tmp / 'f.txt'
    path.write_bytes(b'a\r\nb\n')
    self.assertEqual(common.open_text(path), 'a\r\nb\n')

  def test_missing_file(self):
    self.assertOneLineDataError(lambda: common.open_text(self.tmp / 'x.txt'), 'x.txt')

  def test_empty_file(self):
    (self.tmp / 'e.txt.xz').write_bytes(lzma.compress(b''))
    self.assertOneLineDataError(lambda: common.open_text(self.tmp / 'e.txt.xz'), 'empty',
                                'e.txt.xz')

  def test_corrupt_xz(self):
    data = bytearray(lzma.compress(_TEXT.encode() * 100))
    data[len(data) // 2:len(data) // 2 + 8] = b'\xff' * 8
    (self.tmp / 'c.xz').write_bytes(bytes(data))
    self.assertOneLineDataError(lambda: common.open_text(self.tmp / 'c.xz'), 'c.xz')

  def test_not_xz_at_all(self):
    (self.tmp / 'c.xz').write_bytes(b'plain text pretending to be xz')
    self.assertOneLineDataError(lambda: common.open_text(self.tmp / 'c.xz'), 'c.xz')

  def test_invalid_utf8(self):
    (self.tmp / 'b.txt').write_bytes(b'ok\n\xff\xfe bad\n')
    self.assertOneLineDataError(lambda: common.open_text(self.tmp / 'b.txt'), 'b.txt')


class CacheTest(CommonTestBase):

  def test_atomic_path_replaces_on_success(self):
    target = self.tmp / 'sub' / 'c.bin'
    common.atomic_write_bytes(target, b'one')
    common.atomic_write_bytes(target, b'two')
    self.assertEqual(target.read_bytes(), b'two')
    self.assertEqual(os.listdir(target.parent), ['c.bin'])

  def test_atomic_path_leaves_nothing_on_failure(self):
    target = self.tmp / 'c.bin'
    with self.assertRaises(RuntimeError):
      with common.atomic_path(target) as tmp:
        tmp.write_bytes(b'half')
        raise RuntimeError('killed')
    self.assertEqual(os.listdir(self.tmp), [])

  def test_fingerprint_tracks_content_and_extras(self):
    path = self.tmp / 'f.txt'
    path.write_text('abc')
    before = common.fingerprint([path], 'x')
    self.assertEqual(before, common.fingerprint([path], 'x'))
    self.assertNotEqual(before, common.fingerprint([path], 'y'))
    path.write_text('abcd')
    self.assertNotEqual(before, common.fingerprint([path], 'x'))

  def test_fingerprint_missing_file(self):
    self.assertOneLineDataError(lambda: common.fingerprint([self.tmp / 'gone']), 'gone')


class ProcessSplitTest(parameterized.TestCase):
  """One convention: process i holds rows [i*B, (i+1)*B) of every global batch."""

  @parameterized.parameters(1, 2, 4)
  def test_processes_read_disjoint_rows_covering_each_global_batch(self, count):
    ds = grain.MapDataset.range(16)
    local = 4 // count if count > 1 else 4
    rows = [np.concatenate(list(common.process_batches(ds, local, i, count)))
            for i in range(count)]
    self.assertCountEqual(np.concatenate(rows), range(16))

  @parameterized.parameters((2, 3), (4, 2), (3, 1), (1, 5))
  def test_same_rows_as_the_former_process_rows(self, count, local):
    # The former private-API `ProcessRows`: element k of process i is
    # parent[b * G + i * B + j], (b, j) = divmod(k, B), over full global batches only.
    parent = grain.MapDataset.range(50).shuffle(seed=7)
    g = local * count
    for i in range(count):
      want = [[parent[b * g + i * local + j] for j in range(local)] for b in range(50 // g)]
      got = [list(x) for x in common.process_batches(parent, local, i, count)]
      self.assertEqual(got, want)

  @parameterized.parameters(2, 4)
  def test_global_batches_do_not_depend_on_the_process_count(self, count):
    ds = grain.MapDataset.range(40).shuffle(seed=3).repeat()
    single = iter(ds.batch(8).to_iter_dataset())
    local = 8 // count
    iters = [iter(common.process_batches(ds, local, i, count).to_iter_dataset())
             for i in range(count)]
    for _ in range(6):
      want = next(single)
      got = np.concatenate([next(it) for it in iters])
      np.testing.assert_array_equal(got, want)

  @parameterized.parameters((10, 2, 2), (7, 2, 2), (3, 2, 2), (9, 4, 1), (8, 1, 3))
  def test_eval_rows_follow_the_training_convention(self, n, local, count):
    shares = [list(common.local_rows(n, local, i, count)) for i in range(count)]
    self.assertEqual({len(s) for s in shares}, {-(-n // (local * count))})  # same step count
    for b in range(len(shares[0])):  # batch b of process i: rows b*G + [i*B, (i+1)*B)
      for i, share in enumerate(shares):
        lo = b * local * count + i * local
        self.assertEqual(list(share[b]), [r for r in range(lo, lo + local) if r < n])
    self.assertEqual(sorted(r for s in shares for rng in s for r in rng), list(range(n)))

  def test_seek_resumes_by_step(self):
    ds = grain.MapDataset.range(30).shuffle(seed=0).repeat().batch(3)
    it = iter(ds.to_iter_dataset())
    batches = [next(it) for _ in range(5)]
    fresh = iter(ds.to_iter_dataset())
    common.seek(fresh, 3)
    np.testing.assert_array_equal(next(fresh), batches[3])

  def test_bad_split(self):
    with self.assertRaisesRegex(ValueError, 'bad process split'):
      common.process_batches(grain.MapDataset.range(8), 2, 4, 4)
    with self.assertRaisesRegex(ValueError, 'bad process split'):
      list(common.local_rows(8, 0, 0, 1))


class RealDataDirTest(absltest.TestCase):

  def test_real_data_dir_resolves_with_corpora(self):
    try:
      data_dir = common.resolve_data_dir('')
    except DataError as e:
      self.skipTest(f'real data directory absent: {e}')
    self.assertTrue((data_dir / 'wikitext-2').is_dir())
    self.assertTrue(np.all([(data_dir / d).is_dir() for d in ('mnist', 'cifar10')]))


if __name__ == '__main__':
  absltest.main()
