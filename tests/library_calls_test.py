"""Library calls that replaced hand-rolled code equal the former formulas (issue 9 item 7)."""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from seqpe_jax import checkpoint, samplers, seqpe, transformer


def _former_unravel(flat, shape):
  coords = []
  for size in reversed(tuple(shape)):
    coords.append(flat % size)
    flat = flat // size
  return jnp.stack(coords[::-1], axis=-1).astype(jnp.int32)


@flax.struct.dataclass
class _Pair:
  a: object
  b: object


class LibraryCallsTest(parameterized.TestCase):

  @parameterized.parameters((7,), (3, 5), (100, 100), (2, 3, 4), (10000,))
  def test_unravel_is_jnp_unravel_index(self, *shape):
    flat = jnp.arange(math.prod(shape), dtype=jnp.int32)[::-1].reshape(-1, 1)
    np.testing.assert_array_equal(samplers._unravel(flat, shape), _former_unravel(flat, shape))

  def test_dotted_paths_are_keystr(self):
    tree = {'params': {'x': [jnp.ones(2), (jnp.ones(3),)], 'y': _Pair(jnp.ones(1), {'z': 1})},
            'step': 1}
    former = lambda path: '.'.join(
        str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    self.assertEqual([checkpoint._dotted(p) for p in paths], [former(p) for p in paths])
    self.assertEqual(checkpoint._dotted(paths[1]), 'params.x.1.0')

  def test_num_params_is_tree_size(self):
    boxed = {'a': nn.LogicallyPartitioned(jnp.ones((3, 4)), ('embed', 'mlp')),
             'b': {'c': jnp.ones((5,)), 'd': jnp.ones(())}}
    self.assertEqual(seqpe.num_params(boxed), 12 + 5 + 1)

  def test_dtype_names_are_jnp_dtype(self):
    former = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
    for name, want in former.items():
      self.assertEqual(transformer.dtype_of(name), want)
      self.assertEqual(jnp.ones(2, transformer.dtype_of(name)).dtype, jnp.ones(2, want).dtype)
    with self.assertRaisesRegex(ValueError, "unknown dtype 'int8'"):
      transformer.dtype_of('int8')


if __name__ == '__main__':
  absltest.main()
