"""Tests for seqpe_jax.data.text on the real WikiText files (skipped only if absent)."""

import pathlib
import pickle
import unittest

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from seqpe_jax.data import common
from seqpe_jax.data import text
from seqpe_jax.errors import ConfigError, DataError
from tests.testutil import TmpDirTestCase


def _real_data_dir() -> pathlib.Path:
  try:
    return common.resolve_data_dir('')
  except DataError as e:
    raise unittest.SkipTest(f'real data directory absent: {e}')


def _lm_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      dir='', name='wikitext-2', train_files='', eval_files='', tokenizer='bytes',
      vocab_size=500, cache_dir='', num_workers=0, eval_split='valid'))
  cfg.update(overrides)
  return cfg


class WikiTextTest(TmpDirTestCase):

  def test_files_and_counts_match_release(self):
    files = text.wikitext_files(_real_data_dir(), 'wikitext-2')
    self.assertEqual(sorted(files), ['test', 'train', 'valid'])
    valid = common.open_text(files['valid'])
    # The usual LM count: whitespace tokens plus one <eos> per line (data README).
    self.assertEqual(len(valid.split()) + valid.count('\n'), 217_646)
    self.assertEqual(valid.count('\n'), 3_760)
    self.assertTrue(valid.startswith(' \n = Homarus gammarus = \n'))
    for split, count in (('train', 2_088_628), ('test', 245_569)):
      content = common.open_text(files[split])
      self.assertEqual(len(content.split()) + content.count('\n'), count, split)

  def test_wikitext103_has_no_train(self):
    files = text.wikitext_files(_real_data_dir(), 'wikitext-103')
    self.assertEqual(sorted(files), ['test', 'valid'])
    cfg = _lm_cfg(name='wikitext-103', cache_dir=str(self.cache))
    self.assertOneLineError(
        DataError, lambda: text.build_lm_data(cfg, seq_len=8, batch_size=2, seed=0),
        'no train split', 'wiki.train.tokens')

  def test_missing_dir(self):
    self.assertOneLineError(DataError, lambda: text.wikitext_files(self.tmp, 'wikitext-2'),
                            'wiki.{train,valid,test}.tokens')

  def test_unknown_name(self):
    cfg = _lm_cfg(name='ptb', dir=str(self.tmp), cache_dir=str(self.cache))
    self.assertOneLineError(
        ConfigError, lambda: text.build_lm_data(cfg, seq_len=8, batch_size=2, seed=0), 'ptb')


class StreamTest(TmpDirTestCase):

  def test_tokenize_real_file_cached(self):
    valid = text.wikitext_files(_real_data_dir(), 'wikitext-2')['valid']
    stream = text.tokenize_files(text.ByteTokenizer(), [valid], self.cache)
    self.assertEqual(stream.dtype, np.int32)
    self.assertEqual(len(stream), len(common.open_text(valid).encode('utf-8')))
    self.assertEqual(int((stream == 10).sum()), 3_760)  # Newlines kept.
    again = text.tokenize_files(text.ByteTokenizer(), [valid], self.cache)
    self.assertIsInstance(again, np.memmap)
    np.testing.assert_array_equal(again, stream)

  def test_files_joined_by_newline(self):
    a, b = self.tmp / 'a.txt', self.tmp / 'b.txt'
    a.write_text('ab')
    b.write_text('cd\n')
    stream = text.tokenize_files(text.ByteTokenizer(), [a, b, a])
    self.assertEqual(text.ByteTokenizer().decode(stream), 'ab\ncd\nab')

  def test_tfds_text_mock(self):
    tok = text.ByteTokenizer()
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
      stream = text.tfds_text_stream('lm1b', 'train', tok, max_examples=3)
    self.assertEqual(int((stream == 10).sum()), 3)  # One newline after each document.

  def test_tfds_not_prepared(self):
    self.assertOneLineError(
        DataError, lambda: text.tfds_text_stream('lm1b', 'train', text.ByteTokenizer(),
                                                 data_dir=str(self.tmp)), 'lm1b', 'tfds build')


class TrainIterTest(TmpDirTestCase):

  def test_source_windows(self):
    stream = np.arange(1, 42, dtype=np.int32)
    source = text.LMSource(stream, 8)
    self.assertLen(source, 5)  # (41 - 1) // 8 full windows.
    for i in range(len(source)):
      ex = source[i]
      np.testing.assert_array_equal(ex['inputs'], stream[i * 8:i * 8 + 8])
      np.testing.assert_array_equal(ex['targets'][:-1], ex['inputs'][1:])
      self.assertEqual(ex['targets'][-1], stream[i * 8 + 8])

  def test_memmap_source_pickles_by_path(self):
    path = self.tmp / 's.npy'
    np.save(path, np.arange(1000, dtype=np.int32))
    source = text.LMSource(np.load(path, mmap_mode='r'), 16)
    payload = pickle.dumps(source)
    self.assertLess(len(payload), 1000)
    np.testing.assert_array_equal(pickle.loads(payload)[3]['inputs'], source[3]['inputs'])

  def test_exact_resume(self):
    stream = np.arange(5000, dtype=np.int32)
    it = text.lm_train_iter(stream, seq_len=16, batch_size=4, seed=3)
    for _ in range(5):
      next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(90)]  # Crosses epoch boundaries (78 batches each).
    fresh = text.lm_train_iter(stream, seq_len=16, batch_size=4, seed=3)
    fresh.set_state(state)
    for want in expected:
      got = next(fresh)
      self.assertEqual(got['inputs'].shape, (4, 16))
      np.testing.assert_array_equal(got['inputs'], want['inputs'])
      np.testing.assert_array_equal(got['targets'], want['targets'])

  def test_worker_processes_match_and_resume(self):
    stream = np.arange(3000, dtype=np.int32)
    plain = text.lm_train_iter(stream, seq_len=16, batch_size=4, seed=1)
    expected = [next(plain)['inputs'] for _ in range(6)]
    it = text.lm_train_iter(stream, seq_len=16, batch_size=4, seed=1, num_workers=1)
    got = [next(it)['inputs'] for _ in range(3)]
    state = it.get_state()
    del it
    resumed = text.lm_train_iter(stream, seq_len=16, batch_size=4, seed=1, num_workers=1)
    resumed.set_state(state)
    got += [next(resumed)['inputs'] for _ in range(3)]
    del resumed
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))

  def test_processes_see_disjoint_windows(self):
    seq_len, stream = 10, np.arange(1001, dtype=np.int32)  # 100 windows.
    seen = []
    for index in range(2):
      it = text.lm_train_iter(stream, seq_len=seq_len, batch_size=5, seed=0,
                              process_index=index, process_count=2)
      starts = np.concatenate([next(it)['inputs'][:, 0] for _ in range(10)])  # One epoch.
      seen.append(set((starts // seq_len).tolist()))
      self.assertLen(seen[-1], 50)
    self.assertEmpty(seen[0] & seen[1])
    self.assertEqual(seen[0] | seen[1], set(range(100)))

  def test_errors(self):
    stream = np.arange(20, dtype=np.int32)
    self.assertOneLineError(DataError, lambda: text.lm_train_iter(
        stream, seq_len=20, batch_size=1, seed=0), 'seq_len + 1 = 21')
    self.assertOneLineError(DataError, lambda: text.lm_train_iter(
        stream, seq_len=4, batch_size=5, seed=0), 'batch size 5')

  def test_build_from_files(self):
    data_dir = self.tmp / 'data'
    data_dir.mkdir()
    (data_dir / 'train.txt').write_text('hello world\n' * 200)
    (data_dir / 'eval.txt').write_text('goodbye\n' * 20)
    cfg = _lm_cfg(name='files', dir=str(data_dir), train_files='train.txt',
                  eval_files='eval.txt', cache_dir=str(self.cache))
    data = text.build_lm_data(cfg, seq_len=32, batch_size=4, seed=0)
    self.assertEqual(data.train_tokens, 2400)
    batch = next(data.train_iter)
    self.assertEqual(batch['inputs'].shape, (4, 32))
    self.assertEqual(data.tokenizer.decode(data.eval_stream('valid')), 'goodbye\n' * 20)
    cfg.train_files = 'missing.txt'
    self.assertOneLineError(DataError, lambda: text.build_lm_data(
        cfg, seq_len=32, batch_size=4, seed=0), 'missing.txt')

  def test_build_wikitext2_sentencepiece(self):
    data_dir = _real_data_dir()
    cfg = _lm_cfg(tokenizer='sentencepiece', vocab_size=500, cache_dir=str(self.cache),
                  spm_model_type='bpe', dir=str(data_dir))  # BPE trains fastest.
    data = text.build_lm_data(cfg, seq_len=64, batch_size=8, seed=0, process_index=1,
                              process_count=2)
    self.assertEqual(data.tokenizer.vocab_size, 500)
    batch = next(data.train_iter)
    self.assertEqual(batch['targets'].shape, (8, 64))
    self.assertLess(int(batch['inputs'].max()), 500)
    valid = data.eval_stream('valid')
    self.assertEqual(data.tokenizer.decode(valid[:2000]),
                     data.tokenizer.decode(text.build_lm_eval_stream(cfg, 'valid',
                                                                     data.tokenizer)[:2000]))
    self.assertTrue(data.tokenizer.decode(valid).startswith(' \n = Homarus gammarus = \n'))


class EvalTest(TmpDirTestCase):

  @parameterized.parameters((50, 8, 3, None), (50, 7, 2, 33), (9, 8, 4, None), (2, 5, 1, None))
  def test_chunks_cover_stream_once(self, n, length, batch_size, max_tokens):
    stream = np.arange(100, 100 + n, dtype=np.int32)
    used = stream[:max_tokens] if max_tokens else stream
    chunks = text.lm_eval_chunks(stream, length, max_tokens)
    self.assertTrue(all(len(c) == length + 1 for c in chunks[:-1]))
    np.testing.assert_array_equal(np.concatenate([c[1:] for c in chunks]), used[1:])
    batches = list(text.lm_eval_batches(stream, length, batch_size, max_tokens))
    for b in batches:
      self.assertEqual(b['inputs'].shape, (batch_size, length))
      self.assertEqual(b['weights'].dtype, np.float32)
    weights = np.concatenate([b['weights'] for b in batches])
    targets = np.concatenate([b['targets'] for b in batches])
    inputs = np.concatenate([b['inputs'] for b in batches])
    self.assertEqual(weights.sum(), len(used) - 1)
    np.testing.assert_array_equal(targets[weights > 0], used[1:])
    np.testing.assert_array_equal(inputs[weights > 0], used[:-1])

  @parameterized.parameters((50, 8, 3, 2), (50, 8, 8, 3), (51, 10, 1, 4), (5, 8, 2, 2),
                            (100, 16, 5, 3))
  def test_sliding_scores_each_token_once(self, n, length, stride, batch_size):
    stream = np.arange(1000, 1000 + n, dtype=np.int32)
    batches = list(text.lm_sliding_batches(stream, length, stride, batch_size))
    weights = np.concatenate([b['weights'] for b in batches])
    targets = np.concatenate([b['targets'] for b in batches])
    inputs = np.concatenate([b['inputs'] for b in batches])
    self.assertEqual(weights.sum(), n - 1)
    np.testing.assert_array_equal(targets[weights > 0], stream[1:])  # In order, once each.
    # Context: a scored target at column c sees c + 1 inputs; after the first window
    # every scored token has at least length - stride of context.
    cols = np.nonzero(weights)[1]
    first_window = (targets - inputs == 1) & (inputs[:, :1] == 1000)
    self.assertTrue(np.all(cols[~first_window[weights > 0]] >= length - stride))

  def test_sliding_bad_stride(self):
    # Raised on the call, not on the first batch.
    self.assertOneLineError(ConfigError, lambda: text.lm_sliding_batches(
        np.arange(10), 4, 5, 1), 'stride')
    self.assertOneLineError(ConfigError, lambda: text.lm_eval_batches(
        np.arange(10), 4, 0), 'batch_size')

  def test_too_short_stream(self):
    self.assertOneLineError(DataError, lambda: text.lm_eval_chunks(np.arange(1), 4), '1 tokens')


if __name__ == '__main__':
  absltest.main()


class GutenbergCorpusTest(TmpDirTestCase):
  """`data.name=gutenberg`: train books only in train, held-out eval books split valid/test."""

  def test_splits_are_the_book_split_rule(self):
    import io, lzma, tarfile  # pylint: disable=g-import-not-at-top,multiple-imports
    from seqpe_jax.data import longctx  # pylint: disable=g-import-not-at-top
    names = [f'b{i:02d}.txt' for i in range(60)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
      for n in names:
        data = (f'*** START OF THE PROJECT GUTENBERG EBOOK {n} ***\n<{n}>\n'
                f'*** END OF THE PROJECT GUTENBERG EBOOK {n} ***\n').encode()
        info = tarfile.TarInfo(n)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    root = self.tmp / 'data'
    (root / 'gutenberg').mkdir(parents=True)
    (root / longctx.GUTENBERG_TAR).write_bytes(lzma.compress(buf.getvalue()))
    files = text.gutenberg_corpus(str(root), str(self.cache))
    self.assertEqual(sorted(files), ['test', 'train', 'valid'])
    got = {s: [n for n in names if f'<{n}>' in common.open_text(p[0])] for s, p in files.items()}
    held = [n for n in names if longctx.gutenberg_split(n) == 'eval']
    self.assertEqual(got['train'], [n for n in names if longctx.gutenberg_split(n) == 'train'])
    self.assertEqual(got['valid'], held[0::2])
    self.assertEqual(got['test'], held[1::2])
    self.assertNotEmpty(got['test'])
    mtime = files['train'][0].stat().st_mtime_ns
    again = text.gutenberg_corpus(str(root), str(self.cache))  # written once, then reused
    self.assertEqual(again, files)
    self.assertEqual(files['train'][0].stat().st_mtime_ns, mtime)
    cfg = _lm_cfg(dir=str(root), name='gutenberg', cache_dir=str(self.cache))
    self.assertEqual(text._split_files(cfg), files)
    self.assertOneLineError(DataError, lambda: text.gutenberg_corpus(str(self.tmp),
                                                                     str(self.cache)))
