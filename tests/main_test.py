"""The CLI's answer to user mistakes: one `error:` line on stderr, exit code 2, workdir unchanged.

Each case runs `python -m seqpe_jax.main` in a subprocess (they fail before
anything compiles; two run at a time) against a workdir holding a dummy file
tree whose hash must not change; nothing may be printed on stdout.
"""

from __future__ import annotations

import dataclasses
import lzma
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest, parameterized
from PIL import Image

from configs import smoke
from seqpe_jax import checkpoint
from tests.conftest import SHARED, shared_path
from tests.testutil import child_env, tree_hash

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = '--config=configs/smoke.py'
VIT = ('--config=configs/smoke.py:task=vit', '--config.data.name=folder:{tmp}/images')


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  args: tuple[str, ...]
  message: str              # a substring of the error line ({tmp}: the fixtures' folder)
  workdir: str = 'dummy'    # dummy | incompatible | bad_config_json | file | none


CASES = (
    Case('unknown_config_key', (SMOKE, '--config.train.stepz=1'),
         'unknown config key train.stepz (did you mean train.steps?)'),
    Case('unknown_config_section', (SMOKE, '--config.trainn.steps=1'),
         'unknown config key trainn (did you mean train?)'),
    Case('bad_value_type', (SMOKE, '--config.train.seq_len=abc'),
         'flag --config.train.seq_len=abc'),
    Case('unknown_flag', (SMOKE, '--foo=1'), "Unknown command line flag 'foo'"),
    Case('unknown_config_argument', ('--config=configs/smoke.py:foo=1',),
         "unknown config argument 'foo'; known: task"),
    Case('missing_config_file', ('--config=configs/nothere.py',),
         "cannot load --config=configs/nothere.py: [Errno 2] No such file or directory"),
    Case('missing_config_flag', (), '--config is required'),
    Case('missing_workdir_flag', (SMOKE,), '--workdir is required', workdir='none'),
    Case('bad_mode', (SMOKE, '--mode=bad'), 'flag --mode=bad: value should be one of <train|eval>'),
    Case('unknown_pe_type', (SMOKE, '--config.pe.type=foo'),
         "unknown pe.type 'foo'; choose one of"),
    Case('pe_type_of_the_other_task', (SMOKE, '--config.pe.type=rope2d'),
         "unknown pe.type 'rope2d'"),
    Case('model_heads_not_dividing_width', (SMOKE, '--config.model.num_heads=3'),
         'model.width=32 is not divisible by model.num_heads=3'),
    Case('seqpe_heads_not_dividing_width', (SMOKE, '--config.pe.seqpe.heads=3'),
         'pe.seqpe.width=16 is not divisible by pe.seqpe.heads=3'),
    Case('train_length_past_capacity', (SMOKE, '--config.train.seq_len=20000'),
         'train.seq_len=20000 needs position 19999, beyond the SeqPE digit capacity [0, 10000) '
         'of max_digits=4; set pe.seqpe.max_digits >= 5'),
    Case('eval_length_past_capacity', (SMOKE, '--config.eval.lengths=(16,20000)'),
         'evaluation length 20000 needs position 19999, beyond the SeqPE digit capacity '
         '[0, 10000) of max_digits=4; set pe.seqpe.max_digits >= 5'),
    Case('aux_max_position_past_capacity', (SMOKE, '--config.aux.max_position=100000'),
         'aux.max_position=100000 needs positions up to 99999, beyond the SeqPE digit capacity '
         '[0, 10000) of max_digits=4; set pe.seqpe.max_digits >= 5'),
    Case('eval_grid_past_capacity', (*VIT, '--config.eval.image_sizes=(8,404)'),
         'evaluation image size 404 needs position 100, beyond the SeqPE digit capacity [0, 100) '
         'of max_digits=2; set pe.seqpe.max_digits >= 3'),
    Case('learned_table_without_resize',
         (SMOKE, '--config.pe.type=learned', '--config.pe.learned.resize=none'),
         'evaluation length 32 exceeds the learned position table (16,) and '
         'pe.learned.resize=none'),
    Case('image_size_not_divisible_by_patch', (*VIT, '--config.train.image_size=10'),
         'image size 10x10 is not divisible by the patch size 4'),
    Case('eval_image_size_not_divisible_by_patch', (*VIT, '--config.eval.image_sizes=(8,13)'),
         'image size 13x13 is not divisible by the patch size 4'),
    Case('missing_data_dir', (SMOKE, '--config.data.dir={tmp}/nothere'),
         'data directory {tmp}/nothere (from config.data.dir) does not exist'),
    Case('empty_corpus_file', (SMOKE, '--config.data.dir={tmp}/empty'),
         'data file is empty: {tmp}/empty/wikitext-2/wiki.train.tokens'),
    Case('corrupt_xz_corpus', (SMOKE, '--config.data.dir={tmp}/corrupt'),
         'cannot decode {tmp}/corrupt/wikitext-2/wiki.train.tokens.xz (corrupt compression or '
         'not UTF-8 text)'),
    Case('missing_eval_split', (SMOKE, "--config.eval.splits=('valid','nosuch')"),
         "split 'nosuch' of wikitext-2 not found"),
    Case('corrupt_image', (VIT[0],
                           '--config.data.name=folder:{tmp}/bad_images'),
         'cannot decode image {tmp}/bad_images/train/b/1.png: '),
    Case('missing_image_folder', (VIT[0],
                                  '--config.data.name=folder:{tmp}/nothere'),
         'image folder {tmp}/nothere/train not found'),
    Case('incompatible_workdir', (SMOKE, '--config.model.width=64'),
         'holds a checkpoint from an incompatible config (model.width differs: saved 32, now 64)',
         workdir='incompatible'),
    Case('unreadable_config_json', (SMOKE,), 'config.json is unreadable',
         workdir='bad_config_json'),
    Case('eval_without_checkpoint', (SMOKE, '--mode=eval'), 'no checkpoint in '),
    Case('workdir_is_a_file', (SMOKE,), 'exists and is not a directory', workdir='file'),
    Case('mesh_axes_not_matching_devices', (SMOKE, '--config.mesh.data=3'),
         "mesh axes {{'data': 3, 'fsdp': 1, 'tensor': 1}} multiply to 3, but there is 1 device"),
    Case('mesh_more_devices_than_present', (SMOKE, '--config.mesh.num_devices=4'),
         'mesh.num_devices=4 needs a single host with at least 4 devices'),
    Case('negative_steps', (SMOKE, '--config.train.steps=-1'),
         'train.steps must be positive, got -1'),
    Case('zero_grad_accum', (SMOKE, '--config.train.grad_accum=0'),
         'train.grad_accum must be positive, got 0'),
    Case('shift_sets_not_dividing_batch', (SMOKE, '--config.aux.shift_sets=3'),
         'aux.shift_sets=3 must divide the (micro-)batch 4'),
    Case('bad_nonfinite_policy', (SMOKE, '--config.train.nonfinite=ignore'),
         "train.nonfinite must be stop or skip, got 'ignore'"),
    Case('bad_debug_nan_spec', (SMOKE, '--config.train.debug_nan=foo@1'),
         "train.debug_nan items are 'term@step'"),
    Case('keep_best_without_validation', (SMOKE, '--config.train.keep_best=True'),
         'train.keep_best needs train.eval_every > 0'),
    Case('bad_eval_checkpoint', (SMOKE, '--config.eval.checkpoint=newest'),
         "eval.checkpoint must be latest or best, got 'newest'"),
    Case('best_checkpoint_without_keep_best', (SMOKE, '--config.eval.checkpoint=best'),
         'eval.checkpoint=best needs train.keep_best=True'),
    Case('negative_eval_start_position', (SMOKE, '--config.eval.start_position=-1'),
         'eval.start_position must be >= 0, got -1'),
    Case('eval_start_position_past_capacity', (SMOKE, '--config.eval.start_position=9990'),
         'evaluation length 32 from eval.start_position=9990 needs position 10021, beyond the '
         'SeqPE digit capacity'),
    Case('bad_warmup_init_lr', (SMOKE, '--config.optim.warmup_init_lr=1.0'),
         'optim.warmup_init_lr must lie in [0, optim.lr=0.002], got 1.0'),
)


def _make_images(root: pathlib.Path, corrupt: bool) -> None:
  rng = np.random.default_rng(0)
  for split, per_class in (('train', 2), ('test', 1)):  # 4 train images: one batch of smoke
    for c in ('a', 'b'):
      d = root / split / c
      d.mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(d / f'{i}.png')
  if corrupt:
    (root / 'train' / 'b' / '1.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 8)


def _make_workdir(path: pathlib.Path, kind: str) -> None:
  if kind == 'none':
    return
  if kind == 'file':
    path.parent.mkdir(parents=True)
    path.write_text('not a directory\n')
    return
  (path / 'sub').mkdir(parents=True)
  (path / 'notes.txt').write_text('a file the run must not touch\n')
  (path / 'sub' / 'data.bin').write_bytes(bytes(range(256)))
  if kind in ('incompatible', 'bad_config_json'):
    (path / 'checkpoints' / '4' / 'state').mkdir(parents=True)
    (path / 'checkpoints' / '4' / 'state' / 'x').write_bytes(b'x')
    checkpoint.write_config(path, smoke.get_config())
    if kind == 'bad_config_json':
      (path / 'config.json').write_text('{"task": "lm", ')


@dataclasses.dataclass
class Outcome:
  rc: int
  stdout: str
  stderr: str
  workdir: pathlib.Path
  before: str | None
  after: str | None


def _run_case(case: Case, tmp: pathlib.Path) -> Outcome:
  workdir = tmp / case.name / 'work'
  _make_workdir(workdir, case.workdir)
  before = tree_hash(workdir)
  args = [a.format(tmp=tmp) for a in case.args]
  if case.workdir != 'none':
    args.append(f'--workdir={workdir}')
  p = subprocess.run([sys.executable, '-m', 'seqpe_jax.main', *args], cwd=REPO,
                     env=child_env(), capture_output=True, text=True, timeout=300)
  return Outcome(p.returncode, p.stdout, p.stderr, workdir, before, tree_hash(workdir))


class MainErrorsTest(parameterized.TestCase):
  """One CLI run per test (under `pytest -n`, the cases spread over the workers)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    shared_path('data', 'wikitext-2')
    tmp = cls.tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / 'empty' / 'wikitext-2').mkdir(parents=True)
    (tmp / 'empty' / 'wikitext-2' / 'wiki.train.tokens').write_bytes(b'')
    (tmp / 'corrupt' / 'wikitext-2').mkdir(parents=True)
    good = (SHARED / 'data' / 'wikitext-2' / 'wiki.train.tokens.xz').read_bytes()
    (tmp / 'corrupt' / 'wikitext-2' / 'wiki.train.tokens.xz').write_bytes(good[:4096])
    _make_images(tmp / 'images', corrupt=False)
    _make_images(tmp / 'bad_images', corrupt=True)

  def test_at_least_15_distinct_mistakes(self):
    self.assertGreaterEqual(len({c.message for c in CASES}), 15)

  def test_the_corrupt_corpus_is_really_corrupt(self):
    data = (self.tmp / 'corrupt' / 'wikitext-2' / 'wiki.train.tokens.xz').read_bytes()
    with self.assertRaises(lzma.LZMAError):
      lzma.decompress(data)

  @parameterized.named_parameters((c.name, c) for c in CASES)
  def test_one_error_line_exit_2_workdir_unchanged(self, case: Case):
    out = _run_case(case, self.tmp)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    self.assertEqual(out.rc, 2, out.stderr)
    self.assertLen(lines, 1, out.stderr)
    self.assertTrue(lines[0].startswith('error: '), lines[0])
    self.assertIn(case.message.format(tmp=self.tmp), lines[0])
    self.assertEqual(out.stdout, '')
    self.assertEqual(out.after, out.before, f'{out.workdir} changed')


if __name__ == '__main__':
  absltest.main()
