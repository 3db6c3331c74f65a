"""Tests for seqpe_jax.data.tokenizers (SentencePiece trained on a real WikiText slice)."""

import os
import pickle
from unittest import mock

import numpy as np
from absl.testing import absltest, parameterized

from seqpe_jax.data import common, text, tokenizers
from seqpe_jax.errors import ConfigError
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


if __name__ == '__main__':
  absltest.main()
