"""Every config in configs/ loads, validates and builds its model (shapes only)."""

import importlib
import pathlib

import jax
import pytest
from absl.testing import absltest, parameterized

from configs import common
from seqpe_jax import main as main_lib
from seqpe_jax.tasks import Task, count_params

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common'))
ARGS = {'smoke': [None, 'task=vit'], 'lm_wikitext2': [None, 'pe=rope,steps=10'],
        'lm_wikitext103': [None, 'len=1024'], 'vit_imagenet': [None, 'variant=B/16,pe=rope2d'],
        'vit_cifar10': [None, 'data=mnist,size=28']}


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

  def test_parse_arg(self):
    a = common.parse_arg('pe=rope,steps=10,flag', pe='seqpe', steps=1, flag=False)
    self.assertEqual((a.pe, a.steps, a.flag), ('rope', 10, True))
    self.assertEqual(common.parse_arg('alibi', pe='seqpe').pe, 'alibi')
    with pytest.raises(ValueError, match='unknown config argument'):
      common.parse_arg('nope=1', pe='seqpe')


if __name__ == '__main__':
  absltest.main()
