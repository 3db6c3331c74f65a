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


class ProcessRowsTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 4)
  def test_processes_read_disjoint_rows_covering_each_global_batch(self, count):
    ds = grain.MapDataset.range(16)
    rows = [list(common.process_rows(ds, 4 // count if count > 1 else 4, i, count))
            for i in range(count)]
    flat = [x for r in rows for x in r]
    self.assertCountEqual(flat, range(16))

  @parameterized.parameters(2, 4)
  def test_global_batches_do_not_depend_on_the_process_count(self, count):
    ds = grain.MapDataset.range(40).shuffle(seed=3).repeat()
    single = iter(ds.batch(8).to_iter_dataset())
    local = 8 // count
    iters = [iter(common.process_rows(ds, local, i, count).batch(local).to_iter_dataset())
             for i in range(count)]
    for _ in range(6):
      want = next(single)
      got = np.concatenate([next(it) for it in iters])
      np.testing.assert_array_equal(got, want)

  def test_seek_resumes_by_step(self):
    ds = grain.MapDataset.range(30).shuffle(seed=0).repeat().batch(3)
    it = iter(ds.to_iter_dataset())
    batches = [next(it) for _ in range(5)]
    fresh = iter(ds.to_iter_dataset())
    common.seek(fresh, 3)
    np.testing.assert_array_equal(next(fresh), batches[3])

  def test_bad_rows(self):
    with self.assertRaisesRegex(ValueError, 'bad process rows'):
      common.ProcessRows(grain.MapDataset.range(8), 6, 0, 4)


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
