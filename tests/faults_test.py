"""Fault tests: preemption, kill -9 while checkpointing, disk full, corrupt checkpoints, NaN/Inf.

Every run is the real CLI (`seqpe_jax.main`) in a subprocess: configs/smoke.py,
one CPU device, fp32, 10 steps, metrics every step. Faults are injected
deterministically by `_CHILD`, which patches one orbax / grain / seqpe_jax
function before calling the CLI: it sends itself SIGTERM at a chosen point, or
SIGKILL at a chosen point of the checkpoint write path, or fails a write with
ENOSPC, and the NaN cases use the config's `train.debug_nan` (e.g. `contrastive@6`).
Resumed runs must reproduce the uninterrupted run's metrics bit for bit, step
by step. All runs share a per-session persistent compilation cache, so only the
first run of each graph compiles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest

from seqpe_jax import checkpoint, train
from seqpe_jax.errors import Preempted
from tests.conftest import shared_path
from tests.testutil import tree_hash

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 10
BASE = ('--config=configs/smoke.py', f'--config.train.steps={STEPS}',
        '--config.train.log_every=1', '--config.eval.lengths=(16,)',
        '--config.eval.max_tokens=256')
TIMING = ('tokens_per_sec', 'step_time_ms')

# Runs the CLI after installing the fault described by $SEQPE_TEST_FAULT (JSON).
_CHILD = r'''
import errno, json, os, pathlib, signal, sys
fault = json.loads(os.environ.get('SEQPE_TEST_FAULT') or '{}')
point, at = fault.get('kill'), fault.get('step')


def sigterm(times=1):
  for _ in range(times):
    os.kill(os.getpid(), signal.SIGTERM)


def die():
  os.kill(os.getpid(), signal.SIGKILL)


def step_of(path, level='step'):  # <ckpts>/<step>.orbax-checkpoint-tmp[/<item>] -> step
  p = pathlib.Path(path)
  if (p.parent.name == 'checkpoints') != (level == 'step'):
    return None
  return int((p.name if level == 'step' else p.parent.name).split('.')[0])


if point or 'disk_full' in fault:
  import grain._src.python.checkpoint.handler as grain_handler
  from orbax.checkpoint._src.path import atomicity, deleter
  Tmp = atomicity.AtomicRenameTemporaryPath  # used for the step directory and each item
  create, finalize = Tmp.create, Tmp.finalize
  save_data, delete = grain_handler.CheckpointHandler.save, deleter.StandardCheckpointDeleter.delete

  async def create_(self):  # the empty temporary step directory exists
    out = await create(self)
    if point == 'tmp_created' and step_of(self.get()) == at:
      die()
    return out

  async def finalize_(self):
    s, item = step_of(self.get()), step_of(self.get(), 'item')
    if point == 'before_rename' and s == at:  # every item committed; the step rename is next
      die()
    if 'disk_full' in fault and fault['disk_full'] in (s, item):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    out = await finalize(self)
    if (point == 'after_rename' and s == at) or (point == 'item_renamed' and item == at):
      die()
    return out

  def save_data_(self, directory, *a, **k):  # the iterator state is written, arrays in flight
    save_data(self, directory, *a, **k)
    if point == 'data_written' and step_of(directory, 'item') == at:
      die()

  def delete_(self, step):  # an old checkpoint half deleted
    if point == 'deleting_old' and step == at:
      (pathlib.Path(self._directory) / str(step) / 'state' / '_METADATA').unlink()
      die()
    return delete(self, step)

  Tmp.create, Tmp.finalize = create_, finalize_
  grain_handler.CheckpointHandler.save = save_data_
  deleter.StandardCheckpointDeleter.delete = delete_

from seqpe_jax import main as main_lib, metrics, train

if 'sigterm_after_row' in fault:  # SIGTERM(s) right after step k's metrics are logged
  write = metrics.MetricWriter.write

  def write_(self, step, row):
    write(self, step, row)
    if step == fault['sigterm_after_row']:
      sigterm(fault.get('times', 1))
  metrics.MetricWriter.write = write_

if fault.get('sigterm_in') == 'compile':  # before the first (compiling) step call returns
  jit = train.jit_train_step

  def jit_(*a, **k):
    fn, first = jit(*a, **k), [True]

    def call(*a2, **k2):
      if first.pop() if first else False:
        sigterm()
      return fn(*a2, **k2)
    return call
  train.jit_train_step = jit_

if fault.get('sigterm_in') in ('setup', 'eval'):
  module, name = {'setup': (main_lib, 'build_run'), 'eval': (train, 'evaluate_run')}[
      fault['sigterm_in']]
  original = getattr(module, name)

  def wrapped(*a, **k):
    sigterm()
    return original(*a, **k)
  setattr(module, name, wrapped)

from absl import app
app.run(main_lib.main, flags_parser=main_lib._parse_flags)
'''


def _child_env() -> dict[str, str]:
  env = dict(os.environ)
  # One CPU device, as a user's run (conftest fakes 8 for the in-process tests).
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'device_count' not in f)
  env['JAX_PLATFORMS'] = 'cpu'
  env.setdefault('SEQPE_TEST_JAX_CACHE', tempfile.mkdtemp(prefix='seqpe_jax_cache_'))
  os.environ['SEQPE_TEST_JAX_CACHE'] = env['SEQPE_TEST_JAX_CACHE']  # shared by the session
  env['JAX_COMPILATION_CACHE_DIR'] = env['SEQPE_TEST_JAX_CACHE']
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  env['PYTHONPATH'] = str(REPO)
  env.pop('SEQPE_TEST_FAULT', None)
  return env


@dataclasses.dataclass
class Result:
  rc: int
  stdout: str
  stderr: str

  @property
  def err_lines(self) -> list[str]:
    return [l for l in self.stderr.splitlines() if l.strip()]


def _run(workdir, *overrides: str, fault: dict | None = None) -> Result:
  env = _child_env()
  if fault:
    env['SEQPE_TEST_FAULT'] = json.dumps(fault)
  p = subprocess.run([sys.executable, '-c', _CHILD, *BASE, f'--workdir={workdir}', *overrides],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  return Result(p.returncode, p.stdout, p.stderr)


def _trajectory(workdir) -> dict[int, dict]:
  """metrics.jsonl as {step: row} without the timing columns."""
  rows = {}
  for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines():
    row = json.loads(line)
    rows[row.pop('step')] = {k: v for k, v in row.items() if k not in TIMING}
  return rows


def _steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _tmp_dirs(workdir) -> list[str]:
  d = pathlib.Path(workdir) / 'checkpoints'
  return sorted(p.name for p in d.iterdir() if checkpoint.TMP_SUFFIX in p.name)


_REFERENCE: dict[str, object] = {}


def _reference() -> tuple[pathlib.Path, dict[int, dict]]:
  """The uninterrupted run (checkpoints at 5 and 10), computed once per session."""
  if not _REFERENCE:
    shared_path('data', 'wikitext-2')
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'ref'
    r = _run(workdir, '--config.train.checkpoint_every=5')
    assert r.rc == 0 and not r.err_lines, r.stderr
    traj = _trajectory(workdir)
    assert sorted(traj) == list(range(1, STEPS + 1)), sorted(traj)
    _REFERENCE.update(workdir=workdir, trajectory=traj)
  return _REFERENCE['workdir'], _REFERENCE['trajectory']  # type: ignore[return-value]


class SignalFlagTest(absltest.TestCase):
  """`train._SignalFlag` in-process (pytest runs tests in the main thread)."""

  def test_deferred_flag_then_second_signals(self):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with train._SignalFlag() as flag:
      os.kill(os.getpid(), signal.SIGTERM)
      self.assertEqual((flag.raised, flag.name), (True, 'SIGTERM'))
      os.kill(os.getpid(), signal.SIGTERM)  # ignored: the checkpoint is being written
      with self.assertRaises(KeyboardInterrupt):  # a second Ctrl-C aborts
        os.kill(os.getpid(), signal.SIGINT)
    self.assertEqual((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)), before)

  def test_immediate_flag_raises_preempted_and_nests(self):
    with train._SignalFlag(immediate='during evaluation') as outer:
      with train._SignalFlag() as inner:
        os.kill(os.getpid(), signal.SIGINT)
      self.assertTrue(inner.raised)
      self.assertFalse(outer.raised)
      with self.assertRaisesRegex(Preempted, r'^preempted \(SIGTERM\) during evaluation$'):
        os.kill(os.getpid(), signal.SIGTERM)
    self.assertEqual(Preempted.exit_code, 75)


class FaultTestCase(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ref_dir, self.ref = _reference()

  def assert_same_trajectory(self, workdir, steps=range(1, STEPS + 1)):
    got = _trajectory(workdir)
    self.assertEqual(sorted(got), list(steps))
    for s in steps:
      self.assertEqual(got[s], self.ref[s], f'step {s} differs from the uninterrupted run')

  def assert_ok(self, r: Result):
    self.assertEqual(r.rc, 0, r.stderr)
    self.assertEqual(r.err_lines, [], 'a successful run prints nothing on stderr')

  def assert_one_line(self, r: Result, rc: int, prefix: str) -> str:
    self.assertEqual(r.rc, rc, r.stderr)
    self.assertEqual(len(r.err_lines), 1, r.stderr)
    self.assertTrue(r.err_lines[0].startswith(prefix), r.err_lines[0])
    return r.err_lines[0]


class PreemptionTest(FaultTestCase):

  def test_sigterm_at_each_phase_then_resume_exactly(self):
    """SIGTERM during the first compile, at a random step (twice), during evaluation."""
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'run'
    every = '--config.train.checkpoint_every=100'  # only preemption and final checkpoints
    r = _run(workdir, every, fault={'sigterm_in': 'compile'})
    line = self.assert_one_line(r, 75, 'preempted (SIGTERM): checkpoint written at step 1 ')
    self.assertIn('rerun the same command to resume', line)
    self.assertEqual(_steps(workdir), [1])
    self.assertIsNone(checkpoint.verify_manifest(workdir / 'checkpoints' / '1'))

    k = random.Random().randint(2, STEPS - 2)  # random step; a second SIGTERM is ignored
    r = _run(workdir, every, fault={'sigterm_after_row': k, 'times': 2})
    self.assert_one_line(r, 75, f'preempted (SIGTERM): checkpoint written at step {k + 1} ')
    self.assertIn(f'resumed from {workdir / "checkpoints" / "1"} at step 1', r.stdout)
    self.assertEqual(_steps(workdir), [1, k + 1], f'k={k}')
    self.assert_same_trajectory(workdir, range(1, k + 2))

    r = _run(workdir, every, fault={'sigterm_in': 'eval'})
    self.assert_one_line(r, 75, f'preempted (SIGTERM) during evaluation; the checkpoint at '
                         f'step {STEPS} is complete')
    self.assertFalse((workdir / 'extrapolation.json').exists())
    self.assert_same_trajectory(workdir)

    r = _run(workdir, every)  # evaluates only
    self.assert_ok(r)
    self.assertIn(f'training steps {STEPS}..{STEPS}', r.stdout)
    self.assertTrue((workdir / 'extrapolation.json').exists())
    self.assert_same_trajectory(workdir)

  def test_sigterm_before_training_writes_nothing(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'run'
    r = _run(workdir, fault={'sigterm_in': 'setup'})
    self.assert_one_line(r, 75, 'preempted (SIGTERM) before training started; nothing was saved')
    self.assertFalse(workdir.exists())


class CrashTest(FaultTestCase):

  def test_kill_9_at_every_point_of_a_checkpoint_write_then_resume_exactly(self):
    """One workdir, killed (or failing) at a different point of each save, resumed each time."""
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'run'
    every = '--config.train.checkpoint_every=1'  # keep_checkpoints=2
    # (fault, exit code, committed checkpoints afterwards, step the next run resumes from)
    chain = [
        ({'disk_full': 2}, 74, [1], 1),
        ({'kill': 'tmp_created', 'step': 3}, -9, [1, 2], 2),
        ({'kill': 'data_written', 'step': 4}, -9, [2, 3], 3),
        ({'kill': 'item_renamed', 'step': 5}, -9, [3, 4], 4),
        ({'kill': 'before_rename', 'step': 6}, -9, [4, 5], 5),
        ({'kill': 'after_rename', 'step': 7}, -9, [5, 6, 7], 7),
        ({'kill': 'deleting_old', 'step': 5}, -9, [5, 6, 7, 8], 8),
    ]
    resumed_from = None
    for fault, rc, steps, resume in chain:
      r = _run(workdir, every, fault=fault)
      if rc == 74:
        line = self.assert_one_line(r, 74, 'error: writing the checkpoint at step 2')
        self.assertIn('[Errno 28] No space left on device', line)
        self.assertIn('the last complete checkpoint (step 1) is intact', line)
      else:
        self.assertEqual(r.rc, rc, f'{fault}: {r.stderr}')
      if resumed_from is not None:
        self.assertIn(f'at step {resumed_from}\n', r.stdout, fault)
      if fault.get('kill') == 'deleting_old':  # step 6 may be deleted before or after 5
        self.assertIn(_steps(workdir), ([5, 6, 7, 8], [5, 7, 8]), fault)
        steps = _steps(workdir)
      else:
        self.assertEqual(_steps(workdir), steps, fault)
      # The interrupted write is left as a temporary directory (never restored); the previous
      # run's leftover was removed at start-up.
      unfinished = fault.get('disk_full') or (
          fault['step'] if fault['kill'] not in ('after_rename', 'deleting_old') else None)
      self.assertEqual(_tmp_dirs(workdir),
                       [f'{unfinished}{checkpoint.TMP_SUFFIX}'] if unfinished else [], fault)
      for s in steps:
        if not (fault.get('kill') == 'deleting_old' and s == 5):  # the half-deleted one
          self.assertIsNone(checkpoint.verify_manifest(workdir / 'checkpoints' / str(s)))
      resumed_from = resume
    r = _run(workdir, every)
    self.assert_ok(r)
    self.assertIn(f'at step {resumed_from}\n', r.stdout)
    self.assertEqual(_steps(workdir), [STEPS - 1, STEPS])
    self.assertEqual(_tmp_dirs(workdir), [])
    self.assert_same_trajectory(workdir)

  def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'run'
    shutil.copytree(self.ref_dir, workdir)
    (workdir / 'extrapolation.json').unlink()
    data = sorted((workdir / 'checkpoints' / '10' / 'state').rglob('ocdbt.process_0/d/*'))[-1]
    data.write_bytes(data.read_bytes()[:-7])  # truncated
    r = _run(workdir, '--config.train.checkpoint_every=5')
    line = self.assert_one_line(r, 0, 'warning: checkpoint at step 10 is unusable (state/')
    self.assertIn('(truncated?)); resumed from step 5 instead (moved it to ', line)
    self.assertEqual(_steps(workdir), [5, 10])
    self.assertEqual([p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()],
                     ['10'])
    self.assert_same_trajectory(workdir)
    self.assertTrue((workdir / 'extrapolation.json').exists())

  def test_no_usable_checkpoint_is_refused_and_nothing_changes(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'run'
    shutil.copytree(self.ref_dir, workdir)
    for s in (5, 10):
      (workdir / 'checkpoints' / str(s) / 'state' / '_METADATA').unlink()
    before = tree_hash(workdir)
    r = _run(workdir)
    line = self.assert_one_line(r, 2, 'error: no usable checkpoint in ')
    self.assertIn('step 10: state/_METADATA is missing; step 5: state/_METADATA is missing', line)
    self.assertEqual(tree_hash(workdir), before)

  def test_incompatible_workdir_is_refused_and_nothing_changes(self):
    before = tree_hash(self.ref_dir)
    r = _run(self.ref_dir, '--config.model.width=64')
    line = self.assert_one_line(r, 2, 'error: workdir ')
    self.assertIn('incompatible config (model.width differs: saved 32, now 64)', line)
    self.assertEqual(tree_hash(self.ref_dir), before)


class NonFiniteTest(FaultTestCase):

  def test_nan_stops_without_touching_the_last_checkpoint_or_skips(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / 'run'
    shutil.copytree(self.ref_dir, workdir)
    shutil.rmtree(workdir / 'checkpoints' / str(STEPS))  # resume from step 5
    before = tree_hash(workdir / 'checkpoints')
    every = '--config.train.checkpoint_every=1'
    nan = '--config.train.debug_nan=contrastive@6,task@7,ood@8,grads@9'
    r = _run(workdir, every, nan)
    line = self.assert_one_line(r, 3, 'error: non-finite contrastive loss (and gradients) at '
                                'step 6; stopped without saving that step, the last checkpoint '
                                '(step 5) is untouched')
    self.assertIn('train.nonfinite=skip', line)
    self.assertEqual(tree_hash(workdir / 'checkpoints'), before)  # byte-identical, nothing new
    self.assert_same_trajectory(workdir, range(1, 6))

    r = _run(workdir, every, nan, '--config.train.nonfinite=skip')
    self.assertEqual(r.rc, 0, r.stderr)
    self.assertEqual(r.err_lines, [
        f'warning: non-finite {what} at step {s}; its update was skipped (train.nonfinite=skip)'
        for s, what in ((6, 'contrastive loss (and gradients)'), (7, 'task loss (and gradients)'),
                        (8, 'OOD distillation loss (and gradients)'),
                        (9, 'gradients (all loss terms finite)'))])
    self.assertEqual(_steps(workdir), [STEPS - 1, STEPS])
    rows = _trajectory(workdir)
    self.assertEqual([rows[s] for s in range(1, 6)], [self.ref[s] for s in range(1, 6)])
    self.assertEqual((rows[6]['contrastive'], rows[7]['task_loss'], rows[8]['ood']),
                     ('nan', 'nan', 'nan'))
    self.assertIsInstance(rows[9]['loss'], float)  # finite loss, NaN gradients
    self.assertEqual(rows[9]['grad_norm'], 'nan')
    self.assertIsInstance(rows[STEPS]['loss'], float)


if __name__ == '__main__':
  absltest.main()
