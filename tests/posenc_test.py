"""Tests for seqpe_jax.posenc (the position-encoding registry)."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from seqpe_jax import posenc
from seqpe_jax.errors import ConfigError
from seqpe_jax.positions import grid_2d
from seqpe_jax.posenc import PEConfig, PositionEncoder

C, H = 16, 4


def _pe(type_, data_dim=1, train_grid=(8,), num_prefix=0, **kw):
  kw = {'width': 16, 'heads': 2, 'max_digits': 3 if data_dim == 1 else 2, **kw}
  return PositionEncoder(PEConfig(type=type_, **kw), C, H, data_dim=data_dim,
                         train_grid=train_grid, num_prefix=num_prefix)


def _run(enc, pos, **kw):
  variables = enc.init(jax.random.PRNGKey(0), pos, **kw)
  return variables, enc.apply(variables, pos, **kw)


class RegistryTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      ('seqpe', 1, 'q_pe'), ('learned', 1, 'input_embed'), ('sinusoidal', 1, 'input_embed'),
      ('rope', 1, 'angles'), ('alibi', 1, 'positions'), ('nope', 1, None),
      ('seqpe', 2, 'q_pe'), ('learned', 2, 'input_embed'), ('sincos2d', 2, 'input_embed'),
      ('rope2d', 2, 'angles'), ('rope_mixed', 2, 'positions'), ('nope', 2, None))
  def test_every_type_builds_its_hook(self, type_, data_dim, field):
    grid = (8,) if data_dim == 1 else (2, 4)
    pos = jnp.arange(8)[None, :, None] if data_dim == 1 else grid_2d(2, 4)[None]
    _, out = _run(_pe(type_, data_dim, grid), pos, grid_shape=grid)
    set_fields = {k for k, v in vars(out.ctx).items() if v is not None}
    self.assertEqual(set_fields, set() if field is None else
                     ({'q_pe', 'k_pe'} if field == 'q_pe' else
                      {'positions', 'rope_mask'} if type_ == 'rope_mixed' else {field}))
    chex.assert_tree_all_finite(out)

  def test_type_lists_whatever_module_is_imported_first(self):
    # relbias imports posenc, which imports relbias at its end: with relbias imported first
    # the lists once missed fire and kerple (a fresh interpreter, the modules not cached).
    code = ('from seqpe_jax import relbias; from seqpe_jax import posenc; '
            'print(",".join(posenc.LM_PE_TYPES), ",".join(posenc.PE_TYPES))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    lm, every = (set(x.split(',')) for x in out.stdout.split())
    self.assertLessEqual({'fire', 'kerple', 'rope', 'seqpe'}, lm)
    self.assertEqual(set(posenc.PE_TYPES), every)
    with pytest.raises(AttributeError, match='NO_SUCH'):
      posenc.NO_SUCH  # pylint: disable=pointless-statement

  def test_validation_errors(self):
    with pytest.raises(ConfigError, match="unknown pe.type 'rotary'"):
      PEConfig(type='rotary').validate(1)
    with pytest.raises(ConfigError, match='rope2d supports'):
      PEConfig(type='rope2d').validate(1)
    with pytest.raises(ConfigError, match='not divisible'):
      PEConfig(type='seqpe', width=30, heads=4).validate(1)
    with pytest.raises(ConfigError, match='unknown pe.seqpe.apply'):
      PEConfig(type='seqpe', apply='attn_div').validate(1)
    with pytest.raises(ConfigError, match="unknown pe.seqpe.scalar_form 'fused'"):
      PEConfig(type='seqpe', scalar_form='fused').validate(1)
    with pytest.raises(ConfigError, match="unknown pe.seqpe.pe_qk 'shared'"):
      PEConfig(type='seqpe', pe_qk='shared').validate(1)
    with pytest.raises(ConfigError, match='sincos2d'):
      PEConfig(type='sincos2d').validate(1, posenc.LM_PE_TYPES)

  def test_from_config(self):
    cfg = ml_collections.ConfigDict({'type': 'rope', 'seqpe': {'max_digits': 4, 'apply': 'attn_mul'},
                                     'rope': {'theta': 500.0, 'scaling': 'yarn', 'factor': 4.0}})
    pe = PEConfig.from_config(cfg)
    self.assertEqual((pe.type, pe.max_digits, pe.apply, pe.rope_theta, pe.rope_scaling),
                     ('rope', 4, 'attn_mul', 500.0, 'yarn'))
    self.assertGreater(pe.injection().logit_mult, 1.0)
    cfg.rope.thetaa = 1.0
    with pytest.raises(ConfigError, match='rope_thetaa'):
      PEConfig.from_config(cfg)


class SeqPEHookTest(chex.TestCase):

  def test_aux_positions_share_the_encoder_call(self):
    enc = _pe('seqpe', dropout=0.0)
    pos = jnp.arange(8)[None, :, None]
    aux = jnp.array([[3], [500], [999]])
    variables, out = _run(enc, pos, aux_positions_Mxn=aux)
    chex.assert_shape(out.main_embed, (1, 8, C))
    chex.assert_shape(out.aux_embed, (3, C))
    alone = enc.apply(variables, aux[None])
    np.testing.assert_allclose(out.aux_embed, alone.main_embed[0], atol=1e-5)
    np.testing.assert_allclose(out.aux_embed[0], out.main_embed[0, 3], atol=1e-5)

  def test_prefix_and_interpolate_mode(self):
    enc = _pe('seqpe', 2, (2, 2), num_prefix=1, dropout=0.0, pe_qk='multi')
    pos = grid_2d(2, 2)[None]
    variables, out = _run(enc, pos, grid_shape=(2, 2))
    chex.assert_shape(out.ctx.embed, (1, 5, C))
    np.testing.assert_allclose(out.ctx.embed[0, 0], variables['params']['prefix_pos'].value[0])
    same = enc.apply(variables, pos, grid_shape=(2, 2), mode='interpolate')
    np.testing.assert_allclose(same.ctx.embed, out.ctx.embed, atol=1e-6)
    big = enc.apply(variables, grid_2d(4, 6)[None], grid_shape=(4, 6), mode='interpolate')
    chex.assert_shape(big.ctx.embed, (1, 25, C))
    ext = enc.apply(variables, grid_2d(4, 6)[None], grid_shape=(4, 6))
    self.assertGreater(float(jnp.abs(big.ctx.embed - ext.ctx.embed).max()), 1e-4)


class LearnedTest(chex.TestCase):

  def test_1d_table_lookup_and_interpolation(self):
    enc = _pe('learned')
    variables, out = _run(enc, jnp.arange(8)[None, :, None])
    table = variables['params']['table'].value
    np.testing.assert_allclose(out.ctx.input_embed[0], table, atol=1e-7)
    long = enc.apply(variables, jnp.arange(32)[None, :, None], grid_shape=(32,))
    chex.assert_shape(long.ctx.input_embed, (1, 32, C))
    # Linear interpolation stays inside the convex hull of neighbouring rows.
    self.assertLessEqual(float(jnp.abs(long.ctx.input_embed).max()), float(jnp.abs(table).max()))
    strict = _pe('learned', learned_resize='none')
    with pytest.raises(ConfigError, match='resize'):
      strict.apply(variables, jnp.arange(32)[None, :, None])

  def test_2d_nonsquare_grid(self):
    enc = _pe('learned', 2, (2, 3), learned_resize='bicubic')
    variables, out = _run(enc, grid_2d(2, 3)[None], grid_shape=(2, 3))
    table = variables['params']['table'].value
    np.testing.assert_allclose(out.ctx.input_embed[0], table.reshape(6, C), atol=1e-7)
    big = enc.apply(variables, grid_2d(4, 9)[None], grid_shape=(4, 9))
    chex.assert_shape(big.ctx.input_embed, (1, 36, C))
    # Corners of an upsampled grid come from the matching corners of the table.
    corner = big.ctx.input_embed[0].reshape(4, 9, C)
    self.assertLess(float(jnp.abs(corner[0, 0] - table[0, 0]).max()),
                    float(jnp.abs(corner[0, 0] - table[1, 2]).max()))


if __name__ == '__main__':
  absltest.main()
