"""Tests for seqpe_jax.data.qa: answer-only loss weights, dropping, sources, resumable batches."""

import numpy as np
import pytest
from absl.testing import absltest

from configs import qa_babilong
from seqpe_jax.data import qa
from seqpe_jax.data.tokenizers import ByteTokenizer
from seqpe_jax.errors import ConfigError, DataError
from tests.conftest import shared_path

TOK = ByteTokenizer()


class SFTArraysTest(absltest.TestCase):

  def test_weights_cover_the_answer_and_terminator_only(self):
    arrays, dropped = qa.sft_arrays([{'input': 'ab', 'outputs': ['cd', 'x']}], TOK, seq_len=8)
    self.assertEqual(dropped, 0)
    ids = list(b'ab cd\n')  # prompt + " " + first answer + newline terminator
    np.testing.assert_array_equal(arrays['inputs'][0], ids[:-1] + [0, 0, 0])
    np.testing.assert_array_equal(arrays['targets'][0], ids[1:] + [0, 0, 0])
    # Target t is ids[t+1]: the last prompt token (t=1) predicts ' ', then c, d, '\n'.
    np.testing.assert_array_equal(arrays['weights'][0], [0, 1, 1, 1, 1, 0, 0, 0])

  def test_too_long_examples_are_dropped(self):
    records = [{'input': 'a' * 10, 'outputs': ['b']}, {'input': 'a', 'outputs': ['b']}]
    arrays, dropped = qa.sft_arrays(records, TOK, seq_len=8)
    self.assertEqual((len(arrays['inputs']), dropped), (1, 1))
    with pytest.raises(DataError, match='no fine-tuning example fits'):
      qa.sft_arrays(records[:1], TOK, seq_len=8)

  def test_gpt2_answers_end_with_eos(self):
    class Eos:
      eos_id = 7
      encode = staticmethod(TOK.encode)
    np.testing.assert_array_equal(qa.terminator(Eos()), [7])
    np.testing.assert_array_equal(qa.terminator(TOK), [10])


class SFTConfigTest(absltest.TestCase):

  def test_errors(self):
    with pytest.raises(ConfigError, match="data.sft.source must be one of"):
      qa.SFTConfig.from_config({'source': 'squad'})
    with pytest.raises(ConfigError, match='unknown config.data.sft option'):
      qa.SFTConfig.from_config({'source': 'babilong', 'taskz': 'qa1'})
    with pytest.raises(ConfigError, match='needs data.sft.train_file'):
      qa.SFTConfig.from_config({'source': 'jsonl'})
    with pytest.raises(ConfigError, match='num_examples must be positive'):
      qa.SFTConfig.from_config({'source': 'passkey', 'num_examples': 0})


class BuildTest(absltest.TestCase):

  def _data_cfg(self, **sft):
    shared_path('data', 'babi')
    c = qa_babilong.get_config().data
    c.sft.update(num_examples=24, **sft)
    return c

  def test_babilong_batches_are_deterministic_and_resumable(self):
    cfg = self._data_cfg()
    it, n = qa.build_sft_iter(cfg, TOK, seq_len=512, batch_size=4, seed=3)
    self.assertLessEqual(n, 24)
    first = next(it)
    state = it.get_state()
    second = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)['inputs'], second['inputs'])
    again, _ = qa.build_sft_iter(cfg, TOK, seq_len=512, batch_size=4, seed=3)
    np.testing.assert_array_equal(next(again)['inputs'], first['inputs'])
    for row in range(4):  # each row: prompt, then weighted " <answer>\n"
      w = first['weights'][row]
      answer = TOK.decode(first['targets'][row][w > 0])
      self.assertRegex(answer, r'^ [a-z]+\n$')
      prompt = TOK.decode(first['inputs'][row][:int(np.argmax(w)) + 1])
      self.assertIn('Question: Where is', prompt)
      self.assertTrue(prompt.endswith('Answer:'))

  def test_passkey_source(self):
    cfg = self._data_cfg(source='passkey')
    it, _ = qa.build_sft_iter(cfg, TOK, seq_len=512, batch_size=2, seed=0)
    b = next(it)
    answer = TOK.decode(b['targets'][0][b['weights'][0] > 0])
    self.assertRegex(answer, r'^ \d{5}\n$')


if __name__ == '__main__':
  absltest.main()
