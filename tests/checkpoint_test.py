"""Tests for seqpe_jax.checkpoint: round trip, integrity manifest, fallback, refusals."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import tempfile

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from configs import smoke
from seqpe_jax import checkpoint
from seqpe_jax.errors import CheckpointError, CheckpointWriteError
from tests.testutil import tree_hash


def _state(scale: float = 1.0, shape=(3, 4)):
  return {'w': jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) * scale,
          'step': jnp.asarray(int(scale), jnp.int32)}


def _abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=0).batch(4).to_iter_dataset())


class CheckpointerTest(parameterized.TestCase):

  def _save_steps(self, workdir, steps, *, async_save=True, keep=3):
    it = _iterator()
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=keep, async_save=async_save)
    for s in steps:
      next(it)
      ckpt.save(s, _state(s), it)
    ckpt.close()

  def _restore(self, workdir, shape=(3, 4)):
    it = _iterator()
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=3)
    stderr = io.StringIO()
    try:
      with contextlib.redirect_stderr(stderr):
        out = ckpt.restore(_abstract(_state(shape=shape)), it)
    finally:
      ckpt.close()
    return out, it, stderr.getvalue()

  @parameterized.parameters(True, False)
  def test_round_trip_restores_state_and_data_position(self, async_save):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self._save_steps(workdir, [1, 2, 3], async_save=async_save)
    for s in (1, 2, 3):
      self.assertIsNone(checkpoint.verify_manifest(workdir / 'checkpoints' / str(s)))
      self.assertTrue((workdir / 'checkpoints' / str(s) / checkpoint.MANIFEST).exists())
    (state, step), it, err = self._restore(workdir)
    self.assertEqual((step, err), (3, ''))
    np.testing.assert_array_equal(state['w'], _state(3)['w'])
    expected = _iterator()
    for _ in range(3):
      next(expected)
    np.testing.assert_array_equal(next(it), next(expected))  # the 4th batch follows

  @parameterized.named_parameters(
      ('truncated', lambda f: f.write_bytes(f.read_bytes()[:-3]), 'bytes, expected'),
      ('bit_flip', lambda f: f.write_bytes(bytes([f.read_bytes()[0] ^ 1]) + f.read_bytes()[1:]),
       'fails its CRC-32 check'),
      ('deleted', lambda f: f.unlink(), 'is missing'),
  )
  def test_corrupt_latest_falls_back_and_its_step_can_be_rewritten(self, damage, why):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self._save_steps(workdir, [1, 2])
    files = json.loads((workdir / 'checkpoints' / '2' / checkpoint.MANIFEST).read_text())['files']
    victim = max(files, key=lambda f: files[f][0])  # the largest file: array data
    damage(workdir / 'checkpoints' / '2' / victim)
    (state, step), it, err = self._restore(workdir)
    self.assertEqual(step, 1)
    np.testing.assert_array_equal(state['w'], _state(1)['w'])
    lines = err.splitlines()
    self.assertLen(lines, 1)
    self.assertTrue(lines[0].startswith(f'warning: checkpoint at step 2 is unusable ({victim} '),
                    lines[0])
    self.assertIn(why, lines[0])
    self.assertIn('resumed from step 1 instead (moved it to ', lines[0])
    moved = list((workdir / checkpoint.CORRUPT_DIR).iterdir())
    self.assertEqual([p.name.split('-')[0] for p in moved], ['2'])
    # Step 2 can be written again by the resumed run.
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=3)
    ckpt.save(2, _state(2), it)
    ckpt.close()
    (state, step), _, err = self._restore(workdir)
    self.assertEqual((step, err), (2, ''))

  def test_no_usable_checkpoint_is_refused_and_nothing_moves(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self._save_steps(workdir, [1, 2])
    for s in (1, 2):
      (workdir / 'checkpoints' / str(s) / 'state' / '_METADATA').unlink()
    before = tree_hash(workdir)
    with self.assertRaisesRegex(CheckpointError, r'^no usable checkpoint in .*\(step 2: '
                                r'state/_METADATA is missing; step 1: state/_METADATA is missing\)'
                                r'.*move .* away$'):
      self._restore(workdir)
    self.assertEqual(tree_hash(workdir), before)

  def test_other_shapes_are_refused_not_moved(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self._save_steps(workdir, [1, 2])
    before = tree_hash(workdir)
    with self.assertRaisesRegex(CheckpointError, r'^the checkpoint at step 2 in .* was written by '
                                r'a different model config \(w is float32\[3, 4\] in the '
                                r'checkpoint, float32\[5, 4\] now\); use a new --workdir'):
      self._restore(workdir, shape=(5, 4))
    self.assertEqual(tree_hash(workdir), before)

  def test_checkpoint_without_manifest_still_restores(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self._save_steps(workdir, [1])
    (workdir / 'checkpoints' / '1' / checkpoint.MANIFEST).unlink()
    (_, step), _, err = self._restore(workdir)
    self.assertEqual((step, err), (1, ''))

  def test_leftover_temporary_directory_is_removed_and_never_restored(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self._save_steps(workdir, [1])
    tmp = workdir / 'checkpoints' / f'2{checkpoint.TMP_SUFFIX}'
    (tmp / 'state').mkdir(parents=True)
    (tmp / 'state' / 'half_written').write_bytes(b'\0' * 10)
    self.assertTrue(checkpoint.has_checkpoint(workdir))
    (_, step), _, _ = self._restore(workdir)
    self.assertEqual(step, 1)
    self.assertFalse(tmp.exists())

  def test_failed_write_is_one_checkpoint_write_error(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=2)

    def full(*args, **kwargs):
      raise OSError(28, 'No space left on device')
    ckpt.manager.save = full
    with self.assertRaisesRegex(CheckpointWriteError, r'writing the checkpoint at step 1 in .* '
                                r'failed: OSError: \[Errno 28\] No space left on device; the last '
                                r'complete checkpoint \(step None\) is intact'):
      ckpt.save(1, _state(1), _iterator())
    ckpt.close_quietly()
    self.assertFalse(checkpoint.has_checkpoint(workdir))


class CompatibilityTest(absltest.TestCase):

  def _workdir(self, config):
    workdir = pathlib.Path(tempfile.mkdtemp())
    checkpoint.write_config(workdir, config)
    return workdir

  def test_same_or_non_structural_changes_are_accepted(self):
    workdir = self._workdir(smoke.get_config())
    config = smoke.get_config()
    checkpoint.check_compatible(workdir, config, True)
    config.train.steps, config.optim.lr, config.train.checkpoint_every = 99, 1e-4, 7
    checkpoint.check_compatible(workdir, config, True)

  def test_structural_changes_are_refused_naming_the_key(self):
    workdir = self._workdir(smoke.get_config())
    for key, value, diff in (('model.width', 64, 'model.width differs: saved 32, now 64'),
                             ('pe.type', 'rope', "pe.type differs: saved 'seqpe', now 'rope'"),
                             ('pe.seqpe.max_digits', 5, 'pe.seqpe.max_digits differs'),
                             ('train.seq_len', 32, 'train.seq_len differs: saved 16, now 32'),
                             ('data.name', 'files', 'data.name differs')):
      config = smoke.get_config()
      section, _, leaf = key.rpartition('.')
      node = config
      for part in section.split('.'):
        node = node[part]
      node[leaf] = value
      with self.assertRaisesRegex(CheckpointError, f'incompatible config \\({diff}'):
        checkpoint.check_compatible(workdir, config, True)
      checkpoint.check_compatible(workdir, config, False)  # no checkpoint: nothing to protect

  def test_a_field_added_since_the_run_at_its_off_value_is_accepted(self):
    # A ViT run recorded before `model.drop_path` was declared resumes while it stays 0.
    old = smoke.get_config('task=vit')
    del old.model['drop_path']
    workdir = self._workdir(old)
    config = smoke.get_config('task=vit')
    checkpoint.check_compatible(workdir, config, True)
    config.model.drop_path = 0.1
    with self.assertRaisesRegex(CheckpointError, 'model.drop_path differs: saved None, now 0.1'):
      checkpoint.check_compatible(workdir, config, True)

  def test_layout_only_fields_may_change_or_be_new(self):
    # A run recorded before the prefix tree and the shared attn_scalar bias resumes with them.
    old = smoke.get_config()
    old.pe.seqpe.scalar_form = 'concat'
    del old.pe.seqpe['share_prefixes']
    workdir = self._workdir(old)
    checkpoint.check_compatible(workdir, smoke.get_config(), True)
    config = smoke.get_config()
    config.pe.seqpe.share_prefixes = False
    checkpoint.check_compatible(workdir, config, True)

  def test_unreadable_config_json_is_refused(self):
    workdir = self._workdir(smoke.get_config())
    (workdir / 'config.json').write_text('{"task": ')
    with self.assertRaisesRegex(CheckpointError, 'config.json is unreadable'):
      checkpoint.check_compatible(workdir, smoke.get_config(), True)


class BestCheckpointTest(absltest.TestCase):

  def test_keeps_the_lowest_score_across_restarts(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    params = lambda v: {'w': jnp.full((3,), v, jnp.float32)}
    best = checkpoint.BestCheckpoint(workdir)
    self.assertIsNone(best.best())
    self.assertTrue(best.update(10, params(1.0), 5.0))
    self.assertFalse(best.update(20, params(2.0), 6.0))  # worse: not kept
    self.assertTrue(best.update(30, params(3.0), 4.0))
    best.close()
    again = checkpoint.BestCheckpoint(workdir)  # a resumed run compares with the kept best
    self.assertEqual(again.best(), (30, 4.0))
    self.assertFalse(again.update(40, params(4.0), 4.5))
    restored, step = again.restore(jax.eval_shape(lambda: params(0.0)))
    again.close()
    self.assertEqual(step, 30)
    np.testing.assert_array_equal(restored['w'], [3.0, 3.0, 3.0])
    self.assertEqual(sorted(p.name for p in (workdir / 'best').iterdir() if p.name.isdigit()),
                     ['30'])

  def test_missing_best_is_a_one_line_error(self):
    with self.assertRaisesRegex(CheckpointError, 'no best checkpoint in .*train.keep_best'):
      checkpoint.BestCheckpoint(tempfile.mkdtemp(), create=False)


if __name__ == '__main__':
  absltest.main()
