"""The CLI on 8 fake devices and on 2 processes x 4 devices matches a 1-device run.

Real multi-controller runs: two OS processes join a local coordinator through
`jax.distributed` (gloo collectives on CPU); each reads only its rows of every global
batch; process 0 alone writes metrics; orbax saves collectively. A checkpoint written
by the 2-process run then resumes in 1 process (elastic data resume by step).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest

from tests.conftest import shared_path

REPO = pathlib.Path(__file__).resolve().parents[1]
# decay_steps pins the LR schedule, so 4-step runs follow the first 4 steps of the 6-step one.
ARGS = ['--config=configs/smoke.py', '--config.train.batch_size=8', '--config.optim.decay_steps=6',
        '--config.eval.lengths=(16,)', '--config.eval.batch_size=8']


def _env(devices: int, **extra: str) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('SEQPE_') or k in (
      'SEQPE_CACHE_DIR', 'SEQPE_DATA_DIR')}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONUNBUFFERED='1', **extra)
  return env


def _cli(workdir, devices, *flags, processes=1, steps=4):
  cmd = [sys.executable, '-m', 'seqpe_jax.main', f'--workdir={workdir}', *ARGS,
         f'--config.train.steps={steps}', *flags]
  if processes == 1:
    out = subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [out]
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(cmd + ['--distributed'], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(
                                devices, SEQPE_COORDINATOR=f'localhost:{port}',
                                SEQPE_NUM_PROCESSES=str(processes), SEQPE_PROCESS_ID=str(i)))
           for i in range(processes)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in rows}


class MultiHostTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    shared_path('data', 'wikitext-2')
    cls.single = tempfile.mkdtemp()
    _cli(cls.single, 1, steps=6)

  def test_cli_fsdp4_data2_on_8_devices_matches_one_device(self):
    workdir = tempfile.mkdtemp()
    _cli(workdir, 8, '--config.mesh.fsdp=4', '--config.mesh.data=2')
    ref, got = _losses(self.single), _losses(workdir)
    self.assertEqual(sorted(got), [1, 2, 3, 4])
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [ref[s] for s in range(1, 5)],
                               rtol=1e-5)

  def test_two_processes_match_one_and_resume_elastically(self):
    workdir = tempfile.mkdtemp()
    _cli(workdir, 4, '--config.mesh.fsdp=4', '--config.mesh.data=2', processes=2)
    ref, got = _losses(self.single), _losses(workdir)
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [ref[s] for s in range(1, 5)],
                               rtol=1e-5)
    data_dir = pathlib.Path(workdir) / 'checkpoints' / '4' / 'data'
    self.assertEqual(sorted(p.name for p in data_dir.glob('process_*.json')),
                     ['process_0-of-2.json', 'process_1-of-2.json'])
    self.assertTrue((pathlib.Path(workdir) / 'extrapolation.json').exists())
    # Continue the 2-process checkpoint in ONE process: same data order, same trajectory.
    out = _cli(workdir, 1, steps=6)[0]
    self.assertIn('another process count', out.stdout)
    got = _losses(workdir)
    np.testing.assert_allclose([got[s] for s in (5, 6)], [ref[s] for s in (5, 6)], rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
