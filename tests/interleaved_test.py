"""Tests for benchmarks/interleaved.py: interleaving order, one entry per round, the report."""

import io
import contextlib

from absl.testing import absltest

from benchmarks import interleaved


class InterleavedTest(absltest.TestCase):

  def test_functions_alternate_and_each_round_is_recorded(self):
    order = []
    fns = {'a': lambda: order.append('a'), 'b': lambda: order.append('b')}
    times = interleaved.time_interleaved(fns, rounds=2, calls=3)
    # Per round and function: one untimed call, then `calls` timed ones; a before b.
    self.assertEqual(order, ['a'] * 4 + ['b'] * 4 + ['a'] * 4 + ['b'] * 4)
    self.assertEqual({k: len(v) for k, v in times.items()}, {'a': 2, 'b': 2})
    self.assertTrue(all(t >= 0 for v in times.values() for t in v))

  def test_report_gives_median_min_and_rounds(self):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      interleaved.report('cpu', {'full': [3.0, 1.0, 2.0]}, calls=4)
    self.assertEqual(out.getvalue(),
                     'cpu full: median 2.0 ms, min 1.0 (3 interleaved rounds of 4)\n')


if __name__ == '__main__':
  absltest.main()
