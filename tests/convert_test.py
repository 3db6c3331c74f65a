"""Parity of `load_official_seqpe` with the official PyTorch SeqPE outputs."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from seqpe_jax.convert import load_official_seqpe
from seqpe_jax.errors import CheckpointError
from seqpe_jax.positions import digitize
from tests.conftest import shared_path


def _load(name):
  d = np.load(shared_path('parity', f'{name}.npz'))
  sd = {k[len('param/'):]: d[k] for k in d.files if k.startswith('param/')}
  data_dim, k, w, h, l, o = (int(x) for x in d['config'])
  kwargs = dict(data_dim=data_dim, max_digits=k, width=w, heads=h, layers=l, out_dim=o)
  return d, sd, kwargs


class ConvertTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters('official_text_1d', 'official_image_2d')
  def test_reproduces_official_outputs(self, name):
    d, sd, kwargs = _load(name)
    module, variables = load_official_seqpe(sd, **kwargs)
    out = module.apply(variables, jnp.asarray(d['positions']))
    expected = d['expected']
    # <= 1e-5 relative (relative to the output scale; float32 on both sides).
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(digitize(d['positions'], kwargs['max_digits']),
                                  d['digit_tokens'])

  def test_prefixed_keys_are_accepted(self):
    d, sd, kwargs = _load('official_text_1d')
    module, variables = load_official_seqpe({f'module.pe_encoder.{k}': v for k, v in sd.items()},
                                            **kwargs)
    np.testing.assert_allclose(module.apply(variables, jnp.asarray(d['positions'])),
                               d['expected'], atol=1e-4)

  def test_missing_or_mismatched_weights_raise_one_line_errors(self):
    _, sd, kwargs = _load('official_image_2d')
    broken = dict(sd)
    del broken['transformers.1.mlp.c_fc.weight']
    with pytest.raises(CheckpointError, match='missing'):
      load_official_seqpe(broken, **kwargs)
    with pytest.raises(CheckpointError, match='digit_pos_embed'):
      load_official_seqpe(sd, **{**kwargs, 'max_digits': 3})


if __name__ == '__main__':
  absltest.main()
