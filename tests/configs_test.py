"""Every config in configs/ loads, builds its model, and trains + evaluates shrunk to CPU size."""

import importlib
import json
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from configs import common
from seqpe_jax import main as main_lib
from seqpe_jax.tasks import Task, count_params
from tests.conftest import shared_path
from tests.testutil import child_env

REPO = pathlib.Path(__file__).resolve().parents[1]

# from_workdir.py reads a run directory's config.json (tests/convert_test.py runs it).
CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common', 'from_workdir'))
ARGS = {'smoke': [None, 'task=vit'], 'lm_wikitext2': [None, 'pe=rope,steps=10'],
        'lm_wikitext103': [None, 'len=1024'], 'vit_imagenet': [None, 'variant=B/16,pe=rope2d'],
        'vit_cifar10': [None, 'data=mnist,size=28'],
        'qa_babilong': [None, 'scale=paper,source=passkey']}


class ConfigsTest(parameterized.TestCase):

  def test_all_configs_are_covered(self):
    self.assertEqual(sorted(ARGS), CONFIGS)

  @parameterized.parameters(*[(n, a) for n in CONFIGS for a in ARGS.get(n, [None])])
  def test_loads_and_builds(self, name, arg):
    config = importlib.import_module(f'configs.{name}').get_config(arg)
    main_lib.validate_config_early(config)
    task = Task(config, vocab_size=512, num_classes=10, channels=3)
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    self.assertGreater(count_params(shapes), 0)
    if name == 'lm_wikitext103':
      # GPT-2 small (tied) + the 14.78M SeqPE encoder + the shared pe_qk, at a 512 vocab.
      self.assertEqual(config.model.width, 768)

  @parameterized.parameters(*[(n, a) for n in CONFIGS for a in ARGS.get(n, [None])[:1]])
  def test_trains_and_evaluates_shrunk(self, name, arg):
    """The shipped recipe itself, shrunk by size overrides only, runs 2 steps and evaluates."""
    shared_path('data')
    config = importlib.import_module(f'configs.{name}').get_config(arg)
    overrides = _shrink(config)
    workdir = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory())) / 'run'
    cmd = [sys.executable, '-m', 'seqpe_jax.main', f'--config=configs/{name}.py',
           f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items())]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=900)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    report = json.loads((workdir / 'extrapolation.json').read_text())
    metric = 'ppl' if config.task == 'lm' else 'top1'
    self.assertTrue(report['results'])
    self.assertTrue(all(np.isfinite(r[metric]) for r in report['results']))
    rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
    self.assertEqual(max(r['step'] for r in rows), 2)
    self.assertTrue(all(np.isfinite(r['loss']) for r in rows if 'loss' in r))
    if config.train.get('keep_best', False):  # validated, best model kept and evaluated
      self.assertTrue(any(('val_ppl' in r or 'val_top1' in r) for r in rows))
      self.assertTrue((workdir / 'best').is_dir())

  def test_parse_arg(self):
    a = common.parse_arg('pe=rope,steps=10,flag', pe='seqpe', steps=1, flag=False)
    self.assertEqual((a.pe, a.steps, a.flag), ('rope', 10, True))
    self.assertEqual(common.parse_arg('alibi', pe='seqpe').pe, 'alibi')
    with pytest.raises(ValueError, match='unknown config argument'):
      common.parse_arg('nope=1', pe='seqpe')


def _shrink(config) -> dict[str, object]:
  """CPU-size overrides: layers, widths, lengths / image sizes, batch, dataset — nothing else."""
  a = config.aux
  # The batch must hold the recipe's shift sets (e.g. 64 for the text recipe).
  batch = max(4, int(a.shift_sets)) if config.pe.type == 'seqpe' else 4
  o = {'model.num_layers': 1, 'model.width': 32, 'model.num_heads': 2,
       'pe.seqpe.width': 16, 'pe.seqpe.heads': 2, 'train.steps': 2,
       'train.checkpoint_every': 2, 'train.log_every': 1, 'train.batch_size': batch}
  if config.task == 'lm':
    length = max(16, int(a.ood_points))  # the OOD items sample points of the training length
    if config.data.sft.source:  # QA fine-tuning: its prompts need the recipe's length
      length = int(config.train.seq_len)
      o['data.sft.num_examples'] = 2 * batch
    o.update({'train.seq_len': length, 'eval.lengths': f'({length},{2 * length})',
              'eval.max_tokens': 4 * length, 'eval.batch_size': 4})
    if config.data.name != 'wikitext-2':
      o['data.name'] = 'wikitext-2'
  else:
    patch = int(config.model.patch_size)
    side = max(2, int(np.ceil(np.sqrt(int(a.ood_points)))))  # a grid of >= ood_points cells
    size = side * patch
    o.update({'train.image_size': size, 'eval.image_sizes': f'({size},{size + patch})',
              'eval.batch_size': 8, 'data.max_train_examples': max(batch, 64),
              'data.max_eval_examples': 16})
    if config.data.name != 'cifar10':
      o.update({'data.name': 'cifar10', 'data.eval_split': 'test', 'eval.splits': "('test',)"})
  return o


if __name__ == '__main__':
  absltest.main()
