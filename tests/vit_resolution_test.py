"""benchmarks/vit_resolution.py: the grid the issue asks for, the report, one real shrunk run."""

import json
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tests.testutil import child_env, load_script

REPO = pathlib.Path(__file__).resolve().parents[1]


bench = load_script('benchmarks/vit_resolution.py')


def _record(pe, mode, seed, top1s, sizes=(32, 40)):
  return {'pe': pe, 'mode': mode, 'seed': seed, 'steps': 100, 'train_image_size': 32,
          'results': [{'image_size': s, 'top1': t} for s, t in zip(sizes, top1s)]}


def _flags(cmd):
  return dict(a[len('--config.'):].split('=', 1) for a in cmd if a.startswith('--config.'))


class GridTest(absltest.TestCase):

  def test_every_2d_pe_and_mode_at_two_seeds_or_more(self):
    for name in ('quick', 'full'):
      runs = bench.PROFILES[name].runs()
      ids = [r.id for r in runs]
      self.assertLen(set(ids), len(ids))
      for pe, mode in (('seqpe', 'extend'), ('seqpe', 'interpolate'), ('learned', 'bicubic'),
                       ('sincos2d', 'extend'), ('rope2d', 'extend'),
                       ('rope_mixed', 'extend'), ('nope', 'extend')):
        seeds = {r.seed for r in runs if (r.pe, r.mode) == (pe, mode)}
        self.assertGreaterEqual(len(seeds), 2, (name, pe, mode))
      self.assertIn('seqpe-interpolate/seed1', ids)
      self.assertIn('learned-bicubic/seed0', ids)

  def test_profiles_train_at_32_and_evaluate_four_larger_sizes(self):
    for name, profile in bench.PROFILES.items():
      sets = _flags(profile.runs()[0].command(pathlib.Path('/r')))
      self.assertEqual(sets['train.image_size'], '32', name)
      sizes = [int(s) for s in sets['eval.image_sizes'].strip('()').split(',')]
      self.assertEqual(sizes[0], 32)
      self.assertGreaterEqual(len([s for s in sizes if s > 32]), 4)
      self.assertTrue(all(s % 4 == 0 for s in sizes))  # patch 4

  def test_variant_overrides(self):
    runs = {r.id: r for r in bench.PROFILES['quick'].runs()}
    root = pathlib.Path('/r')
    ext = _flags(runs['seqpe-extend/seed0'].command(root))
    itp = _flags(runs['seqpe-interpolate/seed1'].command(root))
    learned = _flags(runs['learned-bicubic/seed0'].command(root))
    rope = _flags(runs['rope2d-extend/seed1'].command(root))
    self.assertEqual((ext['pe.type'], ext['eval.mode'], ext['seed']), ('seqpe', 'extend', '0'))
    self.assertEqual((itp['pe.type'], itp['eval.mode'], itp['seed']),
                     ('seqpe', 'interpolate', '1'))
    # Interpolate evaluates the checkpoint the extend run of the same seed trained.
    self.assertEqual(runs['seqpe-interpolate/seed1'].after, 'seqpe-extend/seed1')
    self.assertIn('--mode=eval', runs['seqpe-interpolate/seed1'].command(root))
    self.assertIsNone(runs['seqpe-extend/seed1'].after)
    self.assertNotIn('--mode=eval', runs['seqpe-extend/seed1'].command(root))
    self.assertEqual((learned['pe.type'], learned['pe.learned.resize']), ('learned', 'bicubic'))
    self.assertEqual(rope['pe.type'], 'rope2d')
    cmd = runs['nope-extend/seed0'].command(root)
    self.assertIn('--config=configs/vit_cifar10.py', cmd)
    self.assertIn('--workdir=/r/nope-extend/seed0', cmd)
    # One flag per key, the last one winning (an --override replaces the profile's value).
    cmd = runs['nope-extend/seed0'].command(root, ('train.steps=2', 'pe.type=nope'))
    keys = [a.split('=', 1)[0] for a in cmd if a.startswith('--config.')]
    self.assertLen(set(keys), len(keys))
    self.assertEqual(_flags(cmd)['train.steps'], '2')

  def test_markdown_mean_min_max(self):
    recs = [_record('seqpe', 'extend', s, [60.0 + s, 50.0]) for s in range(3)]
    recs.append(_record('nope', 'extend', 0, [58.25, 40.0]))
    recs.append(_record('seqpe', 'interpolate', 0, [61.0, 45.0]))
    md = bench.markdown(recs)
    self.assertIn('| seqpe | extend | 3 | 61.0 [60.0–62.0] | 50.0 [50.0–50.0] |', md)
    self.assertIn('| seqpe | interpolate | 1 | 61.0 | 45.0 |', md)
    self.assertIn('| nope | extend | 1 | 58.2 | 40.0 |', md)
    self.assertIn('| PE | mode | n | 32 px (1×) | 40 px (1.25×) |', md)
    lines = md.splitlines()  # rows in the grid's order
    self.assertLess(lines.index(next(l for l in lines if '| interpolate |' in l)),
                    lines.index(next(l for l in lines if l.startswith('| nope'))))


class EndToEndTest(absltest.TestCase):

  def test_shrunk_seqpe_runs_write_json_md_png_and_resume(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / 'r.json'
      # configs/smoke.py's task=vit shrinking.
      cmd = [sys.executable, 'benchmarks/vit_resolution.py', f'--root={tmp}/runs',
             f'--output={out}', '--jobs=1', '--only=^seqpe-(extend|interpolate)/seed0$',
             *(f'--override={o}' for o in (
                 'model.num_layers=1', 'model.width=32', 'model.num_heads=2',
                 'pe.seqpe.width=16', 'pe.seqpe.heads=2', 'aux.num_pivots=2',
                 'aux.num_candidates=8', 'aux.ood_items=2', 'aux.ood_points=4',
                 'aux.shift_sets=2', 'train.steps=2', 'train.batch_size=4',
                 'train.image_size=8', 'train.checkpoint_every=2', 'optim.warmup_steps=1',
                 'data.max_train_examples=64', 'data.max_eval_examples=16',
                 'eval.image_sizes=(8,12)', 'eval.batch_size=8'))]
      done = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=600)
      self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
      rep = json.loads(out.read_text())
      self.assertEqual(rep['profile'], 'quick')
      self.assertLen(rep['runs'], 2)
      ext, itp = rep['runs']  # in the grid's order
      self.assertEqual((ext['mode'], ext['eval_mode'], ext['trained_in']),
                       ('extend', 'extend', 'seqpe-extend/seed0'))
      self.assertEqual((itp['pe'], itp['mode'], itp['eval_mode'], itp['seed'],
                        itp['train_image_size'], itp['steps'], itp['trained_in']),
                       ('seqpe', 'interpolate', 'interpolate', 0, 8, 2, 'seqpe-extend/seed0'))
      for run in (ext, itp):
        self.assertEqual([r['image_size'] for r in run['results']], [8, 12])
        for r in run['results']:  # a percent: 16 examples give multiples of 6.25
          self.assertBetween(r['top1'], 0.0, 100.0)
          self.assertAlmostEqual(r['top1'] / 6.25, round(r['top1'] / 6.25), places=6)
      # Same trained model: identical at the training size, where both modes encode the
      # training grid.
      self.assertEqual(ext['results'][0]['top1'], itp['results'][0]['top1'])
      itp_dir = pathlib.Path(tmp) / 'runs/seqpe-interpolate/seed0'
      self.assertFalse((itp_dir / 'metrics.jsonl').exists())  # evaluated, not trained
      md = out.with_suffix('.md').read_text()
      self.assertIn('| seqpe | interpolate | 1 |', md)
      self.assertIn('| seqpe | extend | 1 |', md)
      self.assertTrue(out.with_suffix('.png').is_file())
      again = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                             timeout=600)
      self.assertEqual(again.returncode, 0, again.stdout[-2000:] + again.stderr[-2000:])
      self.assertIn('2 already done', again.stdout)


if __name__ == '__main__':
  absltest.main()
