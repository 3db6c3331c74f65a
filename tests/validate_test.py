"""`validate.check_config`: each check is one `error:` line, exit 2, workdir unchanged.

Every case runs `python -m seqpe_jax.main` in a subprocess (two at a time); they fail in
the validation pass, before any data is read or anything compiles.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest, parameterized

from configs import lm_wikitext103, lm_wikitext2, qa_babilong, smoke, vit_cifar10, vit_imagenet
from seqpe_jax import validate
from tests.testutil import child_env, tree_hash

REPO = pathlib.Path(__file__).resolve().parents[1]
LM = '--config=configs/smoke.py'
VIT = '--config=configs/smoke.py:task=vit'


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  args: tuple[str, ...]
  message: str  # a substring of the error line ({tmp}: the fixtures' folder)


CASES = (
    # train
    Case('zero_batch', (LM, '--config.train.batch_size=0'), 'train.batch_size must be positive'),
    Case('zero_log_every', (LM, '--config.train.log_every=0'), 'train.log_every must be positive'),
    Case('zero_checkpoint_every', (LM, '--config.train.checkpoint_every=0'),
         'train.checkpoint_every must be positive, got 0'),
    Case('zero_keep_checkpoints', (LM, '--config.train.keep_checkpoints=0'),
         'train.keep_checkpoints must be positive, got 0'),
    Case('negative_eval_every', (LM, '--config.train.eval_every=-1'),
         'train.eval_every must be >= 0, got -1'),
    Case('accum_not_dividing_batch', (LM, '--config.train.grad_accum=3'),
         'train.batch_size=4 must be divisible by train.grad_accum=3'),
    Case('zero_seq_len', (LM, '--config.train.seq_len=0'), 'train.seq_len must be positive'),
    Case('zero_image_size', (VIT, '--config.train.image_size=0'),
         'train.image_size must be positive'),
    Case('label_smoothing_one', (VIT, '--config.train.label_smoothing=1.0'),
         'train.label_smoothing must lie in [0.0, 1.0), got 1.0'),
    # optim
    Case('zero_lr', (LM, '--config.optim.lr=0.0'), 'optim.lr must be positive, got 0.0'),
    Case('negative_pe_lr', (LM, '--config.optim.pe_lr=-1.0'), 'optim.pe_lr must be >= 0.0'),
    Case('negative_warmup', (LM, '--config.optim.warmup_steps=-1'),
         'optim.warmup_steps must be >= 0, got -1'),
    Case('negative_decay_steps', (LM, '--config.optim.decay_steps=-5'),
         'optim.decay_steps must be >= 0, got -5'),
    Case('unknown_schedule', (LM, '--config.optim.schedule=exp'),
         "optim.schedule must be cosine, linear or constant, got 'exp'"),
    Case('min_lr_ratio_above_one', (LM, '--config.optim.min_lr_ratio=1.5'),
         'optim.min_lr_ratio must lie in [0.0, 1.0], got 1.5'),
    Case('b2_one', (LM, '--config.optim.b2=1.0'), 'optim.b2 must lie in [0.0, 1.0), got 1.0'),
    Case('negative_b1', (LM, '--config.optim.b1=-0.1'), 'optim.b1 must lie in [0.0, 1.0)'),
    Case('zero_eps', (LM, '--config.optim.eps=0.0'), 'optim.eps must be positive'),
    Case('negative_clip', (LM, '--config.optim.clip_norm=-1.0'),
         'optim.clip_norm must be >= 0.0, got -1.0'),
    Case('negative_weight_decay', (LM, '--config.optim.weight_decay=-0.1'),
         'optim.weight_decay must be >= 0.0'),
    # mesh
    Case('zero_mesh_axis', (LM, '--config.mesh.fsdp=0'), 'mesh axes must be positive or -1'),
    Case('two_free_mesh_axes', (LM, '--config.mesh.tensor=-1'),
         'at most one mesh axis may be -1'),
    Case('negative_num_devices', (LM, '--config.mesh.num_devices=-2'),
         'mesh.num_devices must be >= 0, got -2'),
    # data (both tasks)
    Case('negative_workers', (LM, '--config.data.num_workers=-1'),
         'data.num_workers must be >= 0, got -1'),
    Case('cache_dir_is_a_file', (LM, '--config.data.cache_dir={tmp}/afile'),
         'data.cache_dir={tmp}/afile exists and is not a directory'),
    Case('empty_eval_split', (LM, '--config.data.eval_split='), 'data.eval_split must name a split'),
    Case('tfds_without_name', (LM, '--config.data.name=tfds:'), 'data.name=tfds: needs a dataset'),
    Case('tfds_dir_without_tfds', (LM, '--config.data.tfds_data_dir={tmp}'),
         'data.tfds_data_dir is only read with data.name=tfds:<name>'),
    Case('tfds_dir_missing', (LM, '--config.data.name=tfds:wikitext103',
                              '--config.data.tfds_data_dir={tmp}/nothere'),
         'data.tfds_data_dir={tmp}/nothere is not a directory'),
    # data (LM)
    Case('unknown_corpus', (LM, '--config.data.name=wikitext-3'),
         "data.name must be one of wikitext-2, wikitext-103, wikitext-2-raw, wikitext-103-raw, "
         "gutenberg, files or tfds:<name>, got 'wikitext-3'"),
    Case('train_files_without_files', (LM, '--config.data.train_files=a.txt'),
         "data.train_files is only read with data.name=files (got data.name='wikitext-2')"),
    Case('eval_files_without_files', (LM, '--config.data.eval_files=a.txt'),
         'data.eval_files is only read with data.name=files'),
    Case('files_without_train_files', (LM, '--config.data.name=files'),
         'data.name=files needs data.train_files'),
    Case('missing_train_file', (LM, '--config.data.name=files',
                                '--config.data.train_files={tmp}/nothere.txt'),
         'data.train_files: {tmp}/nothere.txt is not a file'),
    Case('examples_without_tfds', (LM, '--config.data.max_train_examples=10'),
         'data.max_train_examples is only read with data.name=tfds:<name> for text'),
    Case('unknown_tokenizer', (LM, '--config.data.tokenizer=words'),
         "data.tokenizer must be bytes, sentencepiece or gpt2, got 'words'"),
    Case('zero_vocab', (LM, '--config.data.vocab_size=0'), 'data.vocab_size must be positive'),
    Case('unknown_spm_model', (LM, '--config.data.spm_model_type=wordpiece'),
         "data.spm_model_type must be unigram, bpe, char or word, got 'wordpiece'"),
    Case('bpe_vocab_alone', (LM, '--config.data.tokenizer=gpt2',
                             '--config.data.bpe_vocab={tmp}/afile'),
         'data.bpe_vocab and data.bpe_merges must be set together'),
    Case('bpe_files_without_gpt2', (LM, '--config.data.bpe_vocab={tmp}/afile',
                                    '--config.data.bpe_merges={tmp}/afile'),
         "data.bpe_vocab is only read with data.tokenizer=gpt2 (got 'bytes')"),
    Case('missing_bpe_file', (LM, '--config.data.tokenizer=gpt2',
                              '--config.data.bpe_vocab={tmp}/nothere.json',
                              '--config.data.bpe_merges={tmp}/afile'),
         'data.bpe_vocab: {tmp}/nothere.json is not a file'),
    Case('unknown_sft_source', (LM, '--config.data.sft.source=squad'),
         "data.sft.source must be one of"),
    # data (ViT)
    Case('unknown_image_dataset', (VIT, '--config.data.name=cifar100'),
         "data.name must be mnist, cifar10, folder:<path> or tfds:<name>, got 'cifar100'"),
    Case('unknown_recipe', (VIT, '--config.data.recipe=deit'),
         "data.recipe must be simple or timm, got 'deit'"),
    Case('unknown_eval_transform', (VIT, '--config.data.eval_transform=crop'),
         "data.eval_transform must be resize or imagenet, got 'crop'"),
    Case('unknown_flip', (VIT, '--config.data.flip=yes'),
         "data.flip must be auto, on or off, got 'yes'"),
    Case('erasing_probability', (VIT, '--config.data.timm.re_prob=1.5'),
         'config.data.timm.re_prob must be in [0, 1], got 1.5'),
    Case('negative_eval_examples', (VIT, '--config.data.max_eval_examples=-1'),
         'data.max_eval_examples must be >= 0, got -1'),
)

SHIPPED = {'lm_wikitext2': lm_wikitext2.get_config, 'lm_wikitext103': lm_wikitext103.get_config,
           'vit_cifar10': vit_cifar10.get_config, 'vit_imagenet': vit_imagenet.get_config,
           'smoke': smoke.get_config, 'smoke_vit': lambda: smoke.get_config('task=vit'),
           'qa_babilong': qa_babilong.get_config,
           'qa_babilong_paper': lambda: qa_babilong.get_config('scale=paper')}


def _run_case(case: Case, tmp: pathlib.Path) -> tuple[int, str, str, bool]:
  workdir = tmp / case.name
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('a file the run must not touch\n')
  before = tree_hash(workdir)
  args = [a.format(tmp=tmp) for a in case.args] + [f'--workdir={workdir}']
  p = subprocess.run([sys.executable, '-m', 'seqpe_jax.main', *args], cwd=REPO,
                     env=child_env(), capture_output=True, text=True, timeout=300)
  return p.returncode, p.stdout, p.stderr, tree_hash(workdir) == before


class ShippedConfigsTest(parameterized.TestCase):

  @parameterized.named_parameters(*SHIPPED.items())
  def test_shipped_config_passes(self, get_config):
    validate.check_config(get_config())

  def test_every_corpus_name_passes(self):
    from configs import lm_wikitext2  # pylint: disable=g-import-not-at-top
    from seqpe_jax.data import text  # pylint: disable=g-import-not-at-top
    for name in text.CORPORA + ('tfds:wikitext103',):
      config = lm_wikitext2.get_config()
      config.data.name = name
      if name == 'files':
        config.data.train_files = __file__  # any existing file
      validate.check_config(config)  # the data itself is probed later, by main


class ValidateCliTest(parameterized.TestCase):
  """One CLI run per test (under `pytest -n`, the cases spread over the workers)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = cls.tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / 'afile').write_text('x\n')

  def test_cases_are_distinct(self):
    self.assertLen({c.message for c in CASES}, len(CASES))

  @parameterized.named_parameters((c.name, c) for c in CASES)
  def test_one_error_line_exit_2_workdir_unchanged(self, case: Case):
    rc, stdout, stderr, unchanged = _run_case(case, self.tmp)
    lines = [l for l in stderr.splitlines() if l.strip()]
    self.assertEqual(rc, 2, stderr)
    self.assertLen(lines, 1, stderr)
    self.assertTrue(lines[0].startswith('error: '), lines[0])
    self.assertIn(case.message.format(tmp=self.tmp), lines[0])
    self.assertEqual(stdout, '')
    self.assertTrue(unchanged)


if __name__ == '__main__':
  absltest.main()
