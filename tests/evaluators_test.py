"""The README's "Adding an evaluation" example: a toy evaluator defined here alone,
registered, run, and written by the report writer; plus the registry itself."""

import json
import pathlib
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np
import pytest
from absl.testing import absltest

from configs import smoke
from seqpe_jax import evaluate, evaluators
from seqpe_jax.errors import ConfigError
from seqpe_jax.tasks import Task
from tests.testutil import REPO, child_env, tree_hash


# --- the README example -------------------------------------------------------------------
@evaluators.register('pe_norm')
class PENorm(evaluators.Evaluator):
  """Mean L2 norm of the SeqPE embeddings of positions 0..l-1, for each eval.lengths."""

  output = 'pe_norm'                    # <workdir>/pe_norm.{json,md,png}
  table = evaluate.Table(x_key='length', metric='norm', metric_label='PE norm',
                         x_label='positions encoded', log_x=True)

  def __init__(self, task, config, data=None):
    super().__init__(task, config, data)  # checks run before anything is written
    self.lengths = [int(l) for l in config.eval.lengths]
    if task.pe.type != 'seqpe' or min(self.lengths) < 1:
      raise ConfigError('pe_norm needs pe.type=seqpe and positive eval.lengths')

  def run(self, params, mesh):
    encode = evaluate.encoder(self.task)  # jitted once per task
    rows = []
    for l in self.lengths:
      pe = encode(params, np.arange(l, dtype=np.int32)[None, :, None], None, 'extend')
      norm = float(np.linalg.norm(np.asarray(pe.main_embed), axis=-1).mean())
      rows.append({'length': l, 'split': 'positions', 'norm': norm})
    return rows
# --- end of the example -------------------------------------------------------------------


class ToyEvaluatorTest(absltest.TestCase):

  def test_registered_run_and_reported(self):
    config = smoke.get_config()
    task = Task(config, vocab_size=64)
    params = nn.meta.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    ev = evaluators.get('pe_norm')(task, config)
    rows = ev.run(params, mesh=None)
    self.assertEqual([r['length'] for r in rows], list(config.eval.lengths))
    workdir = pathlib.Path(tempfile.mkdtemp())
    report = evaluate.write_report(workdir, task, rows, ev.table, ev.output)
    saved = json.loads((workdir / 'pe_norm.json').read_text())
    self.assertEqual(saved, report)
    self.assertEqual(sorted(saved), ['pe', 'results', 'task', 'train_length'])
    table = (workdir / 'pe_norm.md').read_text()
    self.assertIn('PE norm on positions (trained at 16):', table)
    self.assertIn('| 16 (1x) | 32 (2x) |', table)
    self.assertIn(f"| seqpe | {rows[0]['norm']:.2f} | {rows[1]['norm']:.2f} |", table)
    self.assertGreater((workdir / 'pe_norm.png').stat().st_size, 1000)
    config.pe.type = 'rope'
    with pytest.raises(ConfigError, match='pe_norm needs pe.type=seqpe'):
      evaluators.get('pe_norm')(Task(config, vocab_size=64), config)


class ReadmeTest(absltest.TestCase):

  def test_readme_example_is_this_one(self):
    readme = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
    block = readme.split('## Adding an evaluation', 1)[1].split('```python', 1)[1]
    block = block.split('```', 1)[0]
    here = pathlib.Path(__file__).read_text()
    missing = [l for l in block.splitlines() if l.strip() and l not in here]
    self.assertEqual(missing, [])


class RegistryTest(absltest.TestCase):

  def test_defaults_per_task_and_unknown_names(self):
    lm = Task(smoke.get_config(), vocab_size=64)
    vit = Task(smoke.get_config('task=vit'), num_classes=10, channels=3)
    self.assertEqual([e.name for e in evaluators.build(lm, lm.config)], ['lm_extrapolation'])
    self.assertEqual([e.name for e in evaluators.build(vit, vit.config)], ['vit_resolution'])
    self.assertEqual({evaluators.get(n).output for n in ('lm_extrapolation', 'vit_resolution')},
                     {'extrapolation'})
    with pytest.raises(ConfigError, match="unknown evaluation 'nope'"):
      evaluators.get('nope')


# A config file that adds `config.evals.norm` (ml_collections cannot add keys by flag).
EVALS_CONFIG = """
from configs import smoke
from tests import evaluators_test  # registers pe_norm


def get_config(arg=None):
  c = smoke.get_config(arg)
  c.evals.norm = {'type': %r, 'every': 2}
  return c
"""


def _run_main(tmp: pathlib.Path, type_: str) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
  cfg = tmp / f'evals_{type_}.py'
  cfg.write_text(EVALS_CONFIG % type_)
  workdir = tmp / f'run_{type_}'
  p = subprocess.run([sys.executable, '-m', 'seqpe_jax.main', f'--config={cfg}',
                      f'--workdir={workdir}'], cwd=REPO, env=child_env(), capture_output=True,
                     text=True, timeout=600)
  return p, workdir


class ConfigEvalsTest(absltest.TestCase):

  def test_entry_runs_every_n_steps_and_at_the_end(self):
    p, workdir = _run_main(pathlib.Path(tempfile.mkdtemp()), 'pe_norm')
    self.assertEqual(p.returncode, 0, p.stderr[-2000:])
    rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in rows if any(k.startswith('evals/') for k in r)]
    self.assertEqual([r['step'] for r in evals], [2, 4])  # smoke: 4 steps, every=2
    self.assertEqual(sorted(k for k in evals[0] if k != 'step'),
                     ['evals/norm/norm@16', 'evals/norm/norm@32'])
    for ext in ('json', 'md', 'png'):
      self.assertTrue((workdir / f'norm.{ext}').exists(), ext)
    self.assertTrue((workdir / 'extrapolation.json').exists())  # the default still runs
    saved = json.loads((workdir / 'norm.json').read_text())
    self.assertEqual([r['length'] for r in saved['results']], [16, 32])

  def test_unknown_type_is_one_error_line_and_writes_nothing(self):
    tmp = pathlib.Path(tempfile.mkdtemp())
    p, workdir = _run_main(tmp, 'nope')
    self.assertEqual(p.returncode, 2, p.stderr[-2000:])
    errors = [l for l in p.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertIn("evals.norm.type: unknown evaluation 'nope'", errors[0])
    self.assertIsNone(tree_hash(workdir))

  def test_entry_fields_override_and_bad_entries(self):
    config = smoke.get_config()
    task = Task(config, vocab_size=64)
    config.evals.long = {'type': 'lm_extrapolation', 'lengths': (64,)}
    evs = evaluators.build(task, config)
    self.assertEqual([(e.name, e.output, e.every) for e in evs],
                     [('lm_extrapolation', 'extrapolation', 0), ('lm_extrapolation', 'long', 0)])
    self.assertEqual(tuple(evs[1].config.eval.lengths), (64,))
    self.assertEqual(tuple(config.eval.lengths), (16, 32))  # the run's own fields untouched
    for entry, match in (({'type': 'pe_norm', 'every': -1}, r'evals.x.every must be an int'),
                         ({'type': 'pe_norm', 'every': 1.5}, r'evals.x.every must be an int'),
                         ({'type': 'pe_norm', 'lenghts': (8,)}, "unknown field 'lenghts'"),
                         ({'every': 1}, "evals.x must be a dict with a 'type'")):
      c = smoke.get_config()
      c.evals.x = entry
      with pytest.raises(ConfigError, match=match):
        evaluators.build(task, c)
    c = smoke.get_config()
    c.evals.extrapolation = {'type': 'pe_norm'}
    with pytest.raises(ConfigError, match='taken by a default evaluation'):
      evaluators.build(task, c)


if __name__ == '__main__':
  absltest.main()
