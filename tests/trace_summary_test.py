"""benchmarks/trace_summary.py: op names from HLO text and their model-path groups."""

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


if __name__ == '__main__':
  absltest.main()
