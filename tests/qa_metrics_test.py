"""Scoring for long-context evaluation: EM, passkey, BABILong label match, BPC, windows."""

import math

from absl.testing import absltest
import numpy as np

from seqpe_jax import qa_metrics as qm
from seqpe_jax.data.tokenizers import ByteTokenizer
from seqpe_jax.errors import ConfigError

LOCATIONS = ('bathroom', 'bedroom', 'garden', 'hallway', 'kitchen', 'office')


class ExactMatchTest(absltest.TestCase):

  def test_case_whitespace_substring(self):
    self.assertTrue(qm.string_match_any('  The KITCHEN.\n', ['kitchen']))
    self.assertTrue(qm.string_match_any('in Paris, France', ' Paris '))  # References stripped too.
    self.assertFalse(qm.string_match_any('Pari', ['Paris']))
    self.assertFalse(qm.string_match_any('', ['x']))

  def test_any_of_several_references(self):
    self.assertTrue(qm.string_match_any('It was 1905 or so', ['nineteen-five', '1905']))
    self.assertFalse(qm.string_match_any('It was 1906', ['nineteen-five', '1905']))

  def test_average_times_100(self):
    em = qm.exact_match(['the garden', 'no idea', 'Denver Broncos won'],
                        [['garden'], ['hallway'], ['Broncos', 'Denver Broncos']])
    self.assertAlmostEqual(em, 200 / 3)

  def test_mismatched_lengths(self):
    with self.assertRaises(ConfigError):
      qm.exact_match(['a'], [])
    with self.assertRaises(ConfigError):
      qm.exact_match([], [])


class PasskeyTest(absltest.TestCase):

  def test_first_integer(self):
    self.assertTrue(qm.passkey_correct(' 71432. Remember it.', 71432))
    self.assertTrue(qm.passkey_correct('71432', '71432'))
    self.assertFalse(qm.passkey_correct(' 1 is wrong, 71432', 71432))  # Only the first integer.
    self.assertFalse(qm.passkey_correct(' 714320', 71432))
    self.assertFalse(qm.passkey_correct(' seventy', 71432))
    self.assertAlmostEqual(qm.passkey_accuracy(['71432', 'x', '5'], [71432, 1, 5]), 100 * 2 / 3)

  def test_chance(self):
    self.assertAlmostEqual(qm.passkey_chance(5), 1 / 90000)


class LabelMatchTest(absltest.TestCase):

  def test_babilong_compare(self):
    q = 'Where is Mary?'
    self.assertTrue(qm.babilong_compare('kitchen', 'Kitchen', q, LOCATIONS))
    self.assertTrue(qm.babilong_compare('kitchen', ' Mary is in the kitchen. Then garden', q,
                                        LOCATIONS))  # Only the first sentence counts.
    self.assertFalse(qm.babilong_compare('kitchen', 'kitchen or garden', q, LOCATIONS))
    self.assertFalse(qm.babilong_compare('kitchen', 'the office', q, LOCATIONS))
    self.assertFalse(qm.babilong_compare('kitchen', '', q, LOCATIONS))
    # Labels named in the question are ignored (qa5-style questions).
    names = ('Bill', 'Fred', 'Jeff', 'Mary', 'apple', 'football', 'milk')
    self.assertTrue(qm.babilong_compare('Fred', 'Mary gave it to Fred',
                                        'Who did Mary give the milk to?', names))

  def test_first_label(self):
    self.assertTrue(qm.first_label_match('garden', 'The garden, then the kitchen', LOCATIONS))
    self.assertFalse(qm.first_label_match('kitchen', 'The garden, then the kitchen', LOCATIONS))
    self.assertTrue(qm.first_label_match('Hallway', '"HALLWAY!"', LOCATIONS))
    self.assertIsNone(qm.first_label('nowhere', LOCATIONS))

  def test_accuracy_and_chance(self):
    preds, targets = ['kitchen', 'garden and office', 'office'], ['kitchen', 'garden', 'hallway']
    self.assertAlmostEqual(qm.label_match_accuracy(preds, targets, LOCATIONS), 100 / 3)
    self.assertAlmostEqual(qm.label_match_accuracy(preds, targets, LOCATIONS, rule='first'),
                           200 / 3)
    self.assertAlmostEqual(qm.label_chance(LOCATIONS), 1 / 6)
    with self.assertRaises(ConfigError):
      qm.label_match_accuracy(preds, targets, LOCATIONS, rule='nope')

  def test_score_records_groups(self):
    records = [{'task': 'qa1', 'outputs': ['garden'], 'question': 'Where is Mary?',
                'target_length': 512, 'depth': 0.5},
               {'task': 'qa1', 'outputs': ['office'], 'question': 'Where is John?',
                'target_length': 1024, 'depth': 0.5},
               {'task': 'passkey', 'outputs': ['12345'], 'target_length': 512, 'depth': 0.0},
               {'task': 'squad', 'outputs': ['Paris', 'paris, france']}]
    out = qm.score_records(records, ['Garden.', 'kitchen', ' 12345.', 'Paris'],
                           labels={'qa1': LOCATIONS})
    self.assertEqual(out['correct'], [True, False, True, True])
    self.assertEqual(out['accuracy'], 75.0)
    self.assertLen(out['groups'], 4)


class BitsTest(absltest.TestCase):

  def test_uniform_byte_model_is_8_bits_per_byte(self):
    text = 'héllo wörld'  # 11 characters, 13 UTF-8 bytes.
    nll = len(text.encode()) * math.log(256)  # Uniform over 256 byte values.
    self.assertAlmostEqual(qm.bits_per_byte(nll, text), 8.0)
    self.assertAlmostEqual(qm.bits_per_char(nll, text), 8.0 * 13 / 11)
    self.assertAlmostEqual(qm.bits_per_char(math.log(2) * 10, 5), 2.0)
    with self.assertRaises(ConfigError):
      qm.bits_per_char(1.0, '')

  def test_windows_score_every_token_once(self):
    tokens = np.arange(23)
    windows = qm.book_windows(tokens, 5)
    self.assertEqual([len(w) for w in windows], [6, 6, 6, 6, 3])
    targets = np.concatenate([w[1:] for w in windows])
    np.testing.assert_array_equal(targets, tokens[1:])
    for a, b in zip(windows, windows[1:]):
      self.assertEqual(a[-1], b[0])  # The boundary token is context for the next window.
    self.assertEqual(qm.scored_targets(windows), 22)
    full = qm.book_windows(tokens, 5, drop_last=True)
    self.assertEqual(qm.scored_targets(full), 20)
    self.assertEqual(qm.book_windows(np.arange(1), 5), [])

  def test_scored_units_bytes(self):
    tok = ByteTokenizer()
    ids = tok.encode('abcdéf')
    self.assertEqual(qm.scored_units(tok, ids, len(ids) - 1), (5, 6))  # 'bcdéf'.


if __name__ == '__main__':
  absltest.main()
