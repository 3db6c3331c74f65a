"""Mesh sharding on 8 fake CPU devices: equivalence with one device, FSDP/TP shards, resharding."""

import functools
import tempfile

import chex
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax.sharding import PartitionSpec as P

from configs import smoke
from seqpe_jax import checkpoint, optim, sharding, train
from seqpe_jax.errors import ConfigError
from seqpe_jax.tasks import Task

MESHES = {'single': (1, 1, 1), 'data8': (8, 1, 1), 'data2_fsdp4': (2, 4, 1),
          'data2_fsdp2_tensor2': (2, 2, 2)}


def _mesh(shape):
  cfg = ml_collections.ConfigDict(dict(zip(('data', 'fsdp', 'tensor'), shape)))
  return sharding.make_mesh(cfg, jax.devices()[:int(np.prod(shape))])


def _task():
  config = smoke.get_config()
  config.model.update(width=64, num_heads=4)
  config.pe.seqpe.update(width=16, heads=2)
  config.train.batch_size = 8
  return config, Task(config, vocab_size=256)


def _batch(step):
  rng = np.random.default_rng(step)
  tokens = rng.integers(0, 256, (8, 16)).astype(np.int32)
  return {'inputs': tokens, 'targets': np.roll(tokens, -1, 1)}


@functools.lru_cache(maxsize=None)
def _cached_run(shape, steps=3):
  """Runs shared by several tests (each distinct mesh compiles once per session)."""
  return _run(shape, steps)


def _run(shape, steps=3, state=None, start=0):
  config, task = _task()
  tx, lr = optim.build_optimizer(config.optim, 10)
  mesh = _mesh(shape)
  fresh, shardings = train.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
  if state is not None:  # reshard a state from elsewhere onto this mesh (same leaves)
    fresh = jax.device_put(jax.tree.unflatten(jax.tree.structure(fresh), jax.tree.leaves(state)),
                           shardings)
  state = fresh
  step = train.jit_train_step(train.make_train_step(task, lr), shardings, mesh)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for i in range(start, start + steps):
      state, m = step(state, sharding.global_batch(_batch(i), mesh), jax.random.PRNGKey(0))
      losses.append(float(m['loss']))
  return state, losses, shardings, mesh


def _comparable(params):
  """Params on the host, minus the attention key biases.

  A key bias adds a per-query constant to the logits, so its true gradient is exactly 0 and
  Adam turns the summation-order roundoff of each mesh into different O(1e-6) values.
  """
  def strip(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: strip(v) for k, v in tree.items()}
    if 'qkv' in out and 'bias' in out['qkv']:
      out['qkv'] = {**out['qkv'], 'bias': out['qkv']['bias'].copy()}
      out['qkv']['bias'][1] = 0.0
    return out
  return strip(jax.device_get(params))


class MeshTest(chex.TestCase, parameterized.TestCase):

  def test_mesh_shape(self):
    cfg = ml_collections.ConfigDict({'data': -1, 'fsdp': 4, 'tensor': 1})
    self.assertEqual(sharding.mesh_shape(cfg, 8), (2, 4, 1))
    self.assertEqual(sharding.make_mesh(cfg).axis_names, ('data', 'fsdp', 'tensor'))
    with pytest.raises(ConfigError, match='multiply to 6, but there are 8 devices'):
      sharding.mesh_shape(ml_collections.ConfigDict({'data': 3, 'fsdp': 2, 'tensor': 1}), 8)
    with pytest.raises(ConfigError, match='cannot fill 8'):
      sharding.mesh_shape(ml_collections.ConfigDict({'data': -1, 'fsdp': 3, 'tensor': 1}), 8)

  @parameterized.named_parameters(*[(k, v) for k, v in MESHES.items() if k != 'single'])
  def test_same_losses_and_params_as_one_device(self, shape):
    ref_state, ref_losses, _, _ = _cached_run((1, 1, 1))
    state, losses, _, _ = _cached_run(shape)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    # atol: an entry whose gradient is rounding noise gets Adam's normalised, lr-sized step
    # with the noise's sign, so a different reduction order alone moves it by ~1e-6
    # (largest excess over rtol: 6.5e-7 at XLA's default codegen, 1.19e-6 at the tests'
    # level 0, in pe_qk/bias; tests/conftest.py).
    chex.assert_trees_all_close(_comparable(state.params), _comparable(ref_state.params),
                                rtol=1e-5, atol=2e-6)

  def test_params_and_optimizer_state_are_sharded(self):
    _, _, shardings, mesh = _cached_run((2, 4, 1))
    state, _, _, _ = _cached_run((2, 2, 2))
    fc = state.params['block_0']['mlp']['fc']['kernel']  # [64, 256]: ('embed', 'mlp')
    self.assertEqual(fc.sharding.spec, P('fsdp', 'tensor'))
    self.assertEqual(fc.addressable_shards[0].data.shape, (32, 128))  # fsdp=2, tensor=2
    qkv = state.params['block_0']['attn']['qkv']['kernel']  # [64, 3, 4 heads, 16]
    self.assertEqual(qkv.addressable_shards[0].data.shape, (32, 3, 2, 16))
    # Adam's moments follow their parameters.
    mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, 'mu'))
    mus = [m.mu for m in mu if hasattr(m, 'mu')]
    self.assertTrue(any(
        leaf.shape == (64, 256) and leaf.addressable_shards[0].data.shape == (32, 128)
        for tree in mus for leaf in jax.tree.leaves(tree)))
    # Under fsdp=4 every device holds a quarter of an FSDP-sharded kernel.
    fsdp_spec = shardings.params['block_0']['mlp']['fc']['kernel']
    self.assertEqual(fsdp_spec.shard_shape((64, 256)), (16, 256))
    self.assertEqual(fsdp_spec.mesh.shape['fsdp'], 4)
    del mesh

  def test_checkpoint_saved_on_one_mesh_restores_on_another(self):
    _, losses_a, _, _ = _cached_run((2, 4, 1), steps=4)
    first, _, _, _ = _run((2, 4, 1), steps=2)
    workdir = tempfile.mkdtemp()
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=2, async_save=False)
    ckpt.save(2, first, None, force=True)
    ckpt.wait()
    # Restore onto a (2, 2, 2) mesh (different FSDP split, tensor parallel) and continue.
    config, task = _task()
    tx, _ = optim.build_optimizer(config.optim, 10)
    mesh_b = _mesh((2, 2, 2))
    template, shardings_b = train.create_train_state(task, tx, mesh_b, jax.random.PRNGKey(1))
    restored, step = ckpt.restore(train.abstract_state(template, shardings_b), None)
    ckpt.close()
    self.assertEqual(step, 2)
    fc = restored.params['block_0']['mlp']['fc']['kernel']
    self.assertEqual(fc.addressable_shards[0].data.shape, (32, 128))
    _, losses_b, _, _ = _run((2, 2, 2), steps=2, state=restored, start=2)
    np.testing.assert_allclose(losses_b, losses_a[2:], rtol=1e-5)


  @parameterized.parameters((1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4))
  def test_mesh_is_jax_make_mesh_with_the_former_device_order(self, *shape):
    # `jax.make_mesh` places the CPU fake devices exactly as the former
    # `mesh_utils.create_device_mesh` call; the axes stay Auto (linen's logical constraints).
    from jax.experimental import mesh_utils
    from jax.sharding import AxisType
    mesh = _mesh(shape)
    self.assertEqual(mesh.axis_names, sharding.MESH_AXES)
    self.assertEqual(tuple(mesh.devices.shape), shape)
    self.assertEqual(mesh.axis_types, (AxisType.Auto,) * 3)
    devices = jax.devices()[:int(np.prod(shape))]
    np.testing.assert_array_equal(mesh.devices, mesh_utils.create_device_mesh(shape, devices))

  def test_mesh_num_devices_takes_the_first_devices(self):
    cfg = ml_collections.ConfigDict({'data': -1, 'fsdp': 2, 'tensor': 1, 'num_devices': 4})
    mesh = sharding.make_mesh(cfg)
    self.assertEqual(dict(mesh.shape), {'data': 2, 'fsdp': 2, 'tensor': 1})
    self.assertEqual(sorted(d.id for d in mesh.devices.flat), [d.id for d in jax.devices()[:4]])
    with pytest.raises(ConfigError, match='num_devices=16'):
      sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1,
                                                    'num_devices': 16}))

if __name__ == '__main__':
  absltest.main()
