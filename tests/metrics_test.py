"""Tests for seqpe_jax.metrics: jsonl, TensorBoard events, truncation on resume."""

import glob
import json
import os
import struct
import tempfile

import numpy as np

from absl.testing import absltest
from tensorboardX.proto import event_pb2

from seqpe_jax.metrics import MetricWriter


def read_scalars(logdir: str, tag: str) -> list[tuple[int, float]]:
  """Reads a TensorBoard event file (TFRecord framing: len, crc, data, crc)."""
  out = []
  for path in glob.glob(f'{logdir}/events.out.tfevents.*'):
    data = open(path, 'rb').read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        if v.tag == tag:
          out.append((event.step, v.simple_value))
  return out


class MetricWriterTest(absltest.TestCase):

  def test_jsonl_tensorboard_and_resume_truncation(self):
    workdir = tempfile.mkdtemp()
    w = MetricWriter(workdir, total_steps=10, progress=False)
    for step in (1, 2, 3, 4):
      w.write(step, {'loss': 1.0 / step, 'ood': float('nan')})
    w.close()
    rows = [json.loads(l) for l in open(f'{workdir}/metrics.jsonl')]
    self.assertEqual([r['step'] for r in rows], [1, 2, 3, 4])
    self.assertAlmostEqual(rows[1]['loss'], 0.5)
    self.assertEqual(rows[0]['ood'], 'nan')  # non-finite values stay visible, JSON stays valid
    scalars = read_scalars(f'{workdir}/tb', 'loss')
    self.assertEqual([s for s, _ in scalars], [1, 2, 3, 4])
    np.testing.assert_allclose([v for _, v in scalars], [1.0, 0.5, 1.0 / 3, 0.25], rtol=1e-6)
    # Resuming from step 2 drops the entries of the abandoned trajectory.
    with open(f'{workdir}/metrics.jsonl', 'a') as f:
      f.write('{"step": 5, "lo')  # a line cut by a crash
    w = MetricWriter(workdir, total_steps=10, start_step=2, progress=False)
    w.write(3, {'loss': 9.0})
    w.close()
    rows = [json.loads(l) for l in open(f'{workdir}/metrics.jsonl')]
    self.assertEqual([(r['step'], r['loss']) for r in rows], [(1, 1.0), (2, 0.5), (3, 9.0)])

  def test_disabled_writer_writes_nothing(self):
    workdir = tempfile.mkdtemp()
    w = MetricWriter(workdir, total_steps=3, enabled=False)
    w.write(1, {'loss': 1.0})
    w.close()
    self.assertEqual(os.listdir(workdir), [])


if __name__ == '__main__':
  absltest.main()
