"""benchmarks/trace_summary.py: op names from HLO text and their model-path groups."""

import pathlib
import tempfile

from absl.testing import absltest

from tests.testutil import load_script

summary = load_script('benchmarks/trace_summary.py')

HLO = '''HloModule jit_train_step
  %fusion.3 = f32[8]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(train_step)/jvp(GPT)/block_0/attn/qkv/dot_general" stack_frame_id=1}
  ROOT %copy.7 = f32[8]{0} copy(%fusion.3), metadata={op_name="jit(train_step)/transpose(jvp())/cond/branch_0_fun/checkpoint/GPT.encode_positions/posenc/seqpe_encoder/add"}
  %param.1 = f32[8]{0} parameter(0)
'''


class TraceSummaryTest(absltest.TestCase):

  def test_op_names_and_groups(self):
    names = summary.op_names(HLO)
    self.assertEqual(set(names), {'fusion.3', 'copy.7'})
    self.assertEqual(summary.group_of(names['fusion.3'], 3), 'fwd GPT/block_0/attn')
    self.assertEqual(summary.group_of(names['copy.7'], 3),
                     'bwd GPT.encode_positions/posenc/seqpe_encoder')
    self.assertEqual(summary.group_of('', 3), 'fwd ?')

  def test_categories(self):
    cat = summary.category_of
    self.assertEqual(cat('jit(train_step)/jvp(GPT)/block_0/attn/qkv/dot_general'), 'backbone')
    self.assertEqual(cat('jit(train_step)/transpose(jvp())/cond/branch_0_fun/checkpoint/'
                         'GPT.encode_positions/posenc/seqpe_encoder/add'), 'PE encoder')
    self.assertEqual(cat('jit(train_step)/jvp(ViT)/posenc/pe_qk/dot_general'), 'PE encoder')
    self.assertEqual(cat('jit(train_step)/transpose(jvp(GPT))/pe_bias/plhk,pshk->phls/'
                         'dot_general'), 'PE attention bias')
    self.assertEqual(cat('jit(train_step)/samplers/_randint/while'), 'samplers')
    self.assertEqual(cat('jit(train_step)/transpose(jvp())/contrastive/log_softmax'),
                     'contrastive loss')
    self.assertEqual(cat('jit(train_step)/jvp()/ood/sub'), 'OOD loss')
    self.assertEqual(cat('jit(train_step)/task_loss/reduce_sum'), 'task loss')
    self.assertEqual(cat('jit(train_step)/optimizer/_where/select_n'), 'optimizer and guard')
    self.assertTrue(cat('').startswith('unattributed'))
    # a scope name inside another word is not that scope
    self.assertEqual(cat('jit(train_step)/jvp(GPT)/block_0/good/mul'), 'backbone')

  def test_shares_table(self):
    parts = [c for c, _ in summary.CATEGORIES]
    rope = dict.fromkeys(parts, 0.0) | {'backbone': 100.0, parts[-1]: 4.0}
    seqpe = dict.fromkeys(parts, 0.0) | {'backbone': 98.0, 'PE encoder': 25.0, parts[-1]: 6.0}
    rows = summary.shares_table({'rope': rope, 'seqpe': seqpe}, 'rope')
    self.assertEqual(rows[0], '| part | rope ms | seqpe ms | seqpe - rope |')
    self.assertIn('| PE encoder | 0.00 | 25.00 | +25.00 |', rows)
    self.assertIn('| backbone | 100.00 | 98.00 | -2.00 |', rows)
    self.assertEqual(rows[-1], '| total | 104.00 | 129.00 | +25.00 |')
    self.assertEqual(len(rows), 2 + len(parts) + 1)

  def test_errors(self):
    root = tempfile.mkdtemp()
    (pathlib.Path(root) / 'rope').mkdir()  # a variant folder without a trace
    for argv in (['/nonexistent/trace_dir'], [root], [root, '--shares', '--reference=seqpe']):
      with self.subTest(argv=argv), self.assertRaises(SystemExit) as e:
        summary.main(['trace_summary.py', *argv])
      self.assertEqual(e.exception.code, 2)


if __name__ == '__main__':
  absltest.main()
