"""Tests for seqpe_jax.longctx_eval: bpc by hand, PE encoded once per length, greedy decoding,
passkey / BABILong rows, report files, one-line errors. Tiny untrained models (plumbing only)."""

import functools
import json
import math
import pathlib
import tempfile

import flax
import jax
import numpy as np
import pytest
from absl.testing import absltest

from configs import smoke
from seqpe_jax import evaluate, longctx_eval
from seqpe_jax.data import longctx
from seqpe_jax.data.tokenizers import ByteTokenizer
from seqpe_jax.errors import ConfigError, DataError
from seqpe_jax.tasks import Task

TEXT = ('It was the best of times, it was the worst of times. The grass is green. '
        'Mary went home. ') * 3


@pytest.fixture(scope='module')
def lm():
  config = smoke.get_config()
  task = Task(config, vocab_size=256)
  params = flax.linen.meta.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
  return task, params


@functools.lru_cache(maxsize=None)
def _logits_fn(task):
  return jax.jit(lambda p, x: task.model.apply({'params': p}, x)[0])


def _logits(task, params, tokens_BxL):
  """Plain full-sequence logits (positions 0..L-1), jitted: eager flax is slow."""
  return _logits_fn(task)(params, np.asarray(tokens_BxL, np.int32))


def _hand_nll(task, params, window):
  w = np.asarray(window, np.int32)
  logits = _logits(task, params, w[None, :-1])
  return float(-jax.nn.log_softmax(logits[0])[np.arange(len(w) - 1), w[1:]].sum())


def _count_encodes():
  calls, orig = [], evaluate._jitted

  def counting(t, kind):
    if kind == 'encode':
      real = orig(t, kind)
      return lambda *a: (calls.append(a[1].shape), real(*a))[1]
    return orig(t, kind)
  return calls, orig, counting


def test_book_bits_equals_hand_computation(lm):
  task, params = lm
  tok = ByteTokenizer()
  rows = longctx_eval.book_bits(task, params, tok, {'b.txt': TEXT}, lengths=(16,), max_tokens=20)
  # Windows [0:17] and [16:21] (the second padded to 16 inputs with zero weights).
  toks = tok.encode(TEXT)[:21]
  nll = _hand_nll(task, params, toks[:17]) + _hand_nll(task, params, toks[16:21])
  (row,) = rows
  assert (row['length'], row['tokens'], row['chars'], row['bytes'], row['books']) == (
      16, 20, 20, 20, 1)
  np.testing.assert_allclose(row['bpc'], nll / (math.log(2) * 20), rtol=1e-5)
  np.testing.assert_allclose(row['bpb'], row['bpc'], rtol=1e-6)  # ASCII: chars == bytes
  assert set(row) >= {'length', 'bpc', 'bpb', 'tokens', 'chars', 'bytes', 'books'}


def test_book_bits_encodes_pe_once_per_length(lm):
  task, params = lm
  calls, orig, counting = _count_encodes()
  evaluate._jitted = counting
  try:
    books = {'a.txt': TEXT, 'b.txt': TEXT[::-1], 'c.txt': TEXT.upper()}
    rows = longctx_eval.book_bits(task, params, ByteTokenizer(), books, lengths=(16, 32, 64),
                                  max_tokens=100, max_books=2, tokens_per_batch=64)
  finally:
    evaluate._jitted = orig
  assert calls == [(1, 16, 1), (1, 32, 1), (1, 64, 1)]  # many batches, one encode per length
  assert [r['tokens'] for r in rows] == [200, 200, 200]  # the same targets at every length
  assert all(r['books'] == 2 and np.isfinite(r['bpc']) for r in rows)


def test_padded_greedy_matches_naive_loop_and_encodes_once(lm):
  task, params = lm
  prompts = [np.array([1, 2, 3, 4], np.int32), np.array([9, 8, 7, 6, 5], np.int32)]
  calls, orig, counting = _count_encodes()
  evaluate._jitted = counting
  try:
    greedy = longctx_eval.make_greedy(task, params)
    out = greedy(prompts, 2, total_len=12)
    again = greedy(prompts, 2, total_len=12)
  finally:
    evaluate._jitted = orig
  assert calls == [(1, 12, 1)]
  for p, new in zip(prompts, out):
    seq = list(p)
    for _ in range(2):
      logits = _logits(task, params, np.array(seq, np.int32)[None])
      seq.append(int(logits[0, -1].argmax()))
    assert list(new) == seq[len(p):]
  assert [list(a) for a in again] == [list(b) for b in out]


def test_cached_decoder_matches_padded(lm):
  # Runs once seqpe_jax.generate (branch gen) is merged; skipped before.
  pytest.importorskip('seqpe_jax.generate')
  task, params = lm
  prompts = [np.array([1, 2, 3, 4], np.int32), np.array([9, 8, 7, 6, 5], np.int32)]
  cached = longctx_eval.make_greedy(task, params, decoder='cached')(prompts, 2)
  padded = longctx_eval.make_greedy(task, params)(prompts, 2, total_len=12)
  assert [list(a) for a in cached] == [list(b) for b in padded]


def test_passkey_rows_counts_skips_and_determinism(lm):
  task, params = lm
  tok = ByteTokenizer()
  kwargs = dict(lengths=(32, 96, 128), depths=(0.0, 1.0), num_samples=2, seed=3,
                template='{context}\nThe pass key is', max_new_tokens=4)
  rows = longctx_eval.passkey_eval(longctx_eval.make_greedy(task, params), tok, **kwargs)
  assert [(r['length'], r['depth']) for r in rows] == [
      (32, 0.0), (32, 1.0), (96, 0.0), (96, 1.0), (128, 0.0), (128, 1.0)]
  for r in rows:
    assert set(r) >= {'length', 'depth', 'accuracy', 'n', 'chance'}
    assert r['chance'] == pytest.approx(100 / 90000)
  assert [r['n'] for r in rows] == [0, 0, 2, 2, 2, 2]  # 32 bytes cannot hold the needle
  assert rows[0]['accuracy'] is None and rows[0]['skipped'] == 2
  assert all(0 <= r['accuracy'] <= 100 for r in rows[2:])
  again = longctx_eval.passkey_eval(longctx_eval.make_greedy(task, params), tok, **kwargs)
  assert again == rows


def _babi_samples():
  facts = ('Mary moved to the bathroom.', 'John went to the hallway.')
  return [longctx.BabiSample('qa1', facts, 'Where is Mary?', 'bathroom', (0,)),
          longctx.BabiSample('qa1', facts + ('Mary went to the garden.',), 'Where is Mary?',
                             'garden', (2,))]


def test_babilong_rows_keys_and_determinism(lm):
  task, params = lm
  tok = ByteTokenizer()
  filler = longctx.Filler(longctx.split_sentences(TEXT))
  kwargs = dict(tasks=('qa1',), lengths=(160, 192), depths=(None, 0.5), num_samples=2, seed=1,
                samples={'qa1': _babi_samples()}, max_new_tokens=4)
  rows = longctx_eval.babilong_eval(longctx_eval.make_greedy(task, params), tok, filler, **kwargs)
  assert len(rows) == 4
  for r in rows:
    assert set(r) >= {'task', 'length', 'depth', 'em', 'label_match', 'n', 'chance'}
    assert r['task'] == 'qa1' and r['n'] == 2
    assert r['chance'] == pytest.approx(100 / 6)
    assert 0 <= r['em'] <= 100 and 0 <= r['label_match'] <= 100
  again = longctx_eval.babilong_eval(longctx_eval.make_greedy(task, params), tok, filler,
                                     **kwargs)
  assert again == rows


def test_report_files():
  rows = [{'pe': pe, 'task': 'qa1', 'length': l, 'depth': d, 'em': 10.0 * i + j,
           'chance': 16.7, 'n': 2}
          for i, pe in enumerate(('seqpe', 'rope')) for l in (64, 128)
          for j, d in enumerate((0.0, 1.0))]
  out = pathlib.Path(tempfile.mkdtemp()) / 'sub' / 'qa'
  report = longctx_eval.write_report(out, rows, metric='em', train_length=64, title='QA',
                                     vrange=(0, 100))
  saved = json.loads(pathlib.Path(f'{out}.json').read_text())
  assert saved == report and saved['rows'] == rows
  md = pathlib.Path(f'{out}.md').read_text()
  assert '| pe | 64 (1x) | 128 (2x) |' in md
  assert '| seqpe | 0.500 | 0.500 |' in md and '| rope | 10.5 | 10.5 |' in md
  assert '| chance | 16.7 | 16.7 |' in md
  assert 'em by length x depth (qa1, rope):' in md and '| 64 | 10.0 | 11.0 |' in md
  assert pathlib.Path(f'{out}.png').stat().st_size > 1000
  # Rows without depth / facet (book bits): one table, no heat map.
  books = [{'pe': 'alibi', 'length': l, 'bpc': 2.0 + l / 1000} for l in (64, 128)]
  longctx_eval.write_report(out.parent / 'books', books, metric='bpc', train_length=64)
  md = (out.parent / 'books.md').read_text()
  assert '| alibi | 2.064 | 2.128 |' in md and 'depth' not in md
  with pytest.raises(ConfigError, match='metric column'):
    longctx_eval.write_report(out, books, metric='em')


def test_one_line_errors(lm):
  task, params = lm
  tmp = tempfile.mkdtemp()
  with pytest.raises(DataError, match=r"(?s)'pg19'.*tfds build") as e:
    longctx_eval.read_books('tfds:pg19', tfds_data_dir=tmp)
  assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match="'gutenberg' or 'tfds"):
    longctx_eval.read_books('pg19')
  tok = ByteTokenizer()
  with pytest.raises(ConfigError, match='positive'):
    longctx_eval.book_bits(task, params, tok, {'a': TEXT}, lengths=())
  with pytest.raises(ConfigError, match='max_tokens'):
    longctx_eval.book_bits(task, params, tok, {'a': TEXT}, lengths=(16,), max_tokens=0)
  with pytest.raises(ConfigError, match='max_digits'):
    longctx_eval.book_bits(task, params, tok, {'a': TEXT}, lengths=(20000,))
  with pytest.raises(ConfigError, match='passkey depths'):
    longctx_eval.passkey_eval(lambda *a: [], tok, lengths=(64,), depths=(None,))
  with pytest.raises(ConfigError, match='num_samples'):
    longctx_eval.passkey_eval(lambda *a: [], tok, lengths=(64,), num_samples=0)
  with pytest.raises(ConfigError, match="decoder='cached'"):
    longctx_eval.make_greedy(task, params, official_cache_bias=True)
  with pytest.raises(ConfigError, match='decoder must be'):
    longctx_eval.make_greedy(task, params, decoder='beam')
  with pytest.raises(ConfigError, match='total_len'):
    longctx_eval.make_greedy(task, params)([np.arange(8)], 4, total_len=10)


if __name__ == '__main__':
  absltest.main()
