"""Parity of the official-checkpoint loaders with the official PyTorch outputs, and the CLI."""

import collections
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from seqpe_jax import convert
from seqpe_jax.convert import load_official_gpt2, load_official_seqpe, load_official_vit
from seqpe_jax.errors import CheckpointError, ConfigError
from seqpe_jax.positions import digitize
from tests.conftest import shared_path
from tests.testutil import TmpDirTestCase, child_env

REPO = pathlib.Path(__file__).resolve().parents[1]
GPT_FILES = ('official_gpt2_seqpe', 'official_gpt2_seqpe_seed98765')
VIT_FILES = ('official_vit_seqpe', 'official_vit_seqpe_seed98765')


def _load(name):
  d = np.load(shared_path('parity', f'{name}.npz'))
  sd = {k[len('param/'):]: d[k] for k in d.files if k.startswith('param/')}
  data_dim, k, w, h, l, o = (int(x) for x in d['config'])
  kwargs = dict(data_dim=data_dim, max_digits=k, width=w, heads=h, layers=l, out_dim=o)
  return d, sd, kwargs


def _load_full(name):
  """(npz, model_state, pe_state, config_json); skips a seed variant that is not shipped."""
  path = shared_path('parity', f'{name}.npz')
  if not path.exists():
    pytest.skip(f'{path} is not shipped')
  d = np.load(path, allow_pickle=False)
  model = {k[len('param/'):]: d[k] for k in d.files
           if k.startswith('param/') and not k.startswith('param/pe_model.')}
  pe = {k[len('param/pe_model.'):]: d[k] for k in d.files if k.startswith('param/pe_model.')}
  return d, model, pe, json.loads(str(d['config_json']))


def _rel(got, want) -> float:
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _gpt(name):
  d, model, pe, cj = _load_full(name)
  return (d, model, pe, cj) + load_official_gpt2(model, pe, pe_config=cj['pe_config'],
                                                 gpt2_config=cj['gpt2'])


def _vit(name):
  d, model, pe, cj = _load_full(name)
  return (d, model, pe, cj) + load_official_vit(model, pe, pe_config=cj['pe_config_flat'],
                                                vit_config=cj['vit'])


# ---------------------------------------------------------------------------- a torch zip

class _Global:
  """Written as the pickle GLOBAL `module.name` (what torch's pickles reference)."""

  def __init__(self, module, name):
    self.module, self.name, self.__name__ = module, name, name

  def __call__(self, *args):
    raise AssertionError('never called')


class _Tensor:
  def __init__(self, array):
    self.array = np.asarray(array)


class _Storage:
  def __init__(self, key, numel, dtype):
    self.key, self.numel, self.dtype = key, numel, dtype


class _Config(dict):
  """Pickles like a yacs CfgNode (a dict subclass with attribute state)."""

  def __reduce__(self):
    return (_Global('yacs.config', 'CfgNode'), (), {'__immutable__': True,
                                                    '__deprecated_keys__': set()},
            None, iter(self.items()))


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes torch's zip `data.pkl` without torch: storages as persistent ids."""

  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def __init__(self, file, storages):
    super().__init__(file, protocol=2)
    self.storages = storages

  def _save_global(self, obj):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
    self.memoize(obj)
  dispatch[_Global] = _save_global

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      names = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float16): 'HalfStorage'}
      return ('storage', _Global('torch', names[obj.dtype]), obj.key, 'cpu', obj.numel)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      a = obj.array
      # Stored transposed-contiguous when 2-D, to exercise strides.
      base = np.ascontiguousarray(a.T).T if a.ndim == 2 else np.ascontiguousarray(a)
      key = str(len(self.storages))
      self.storages[key] = np.ascontiguousarray(base.T if a.ndim == 2 else base).tobytes()
      strides = tuple(s // a.itemsize for s in base.strides)
      return (_Global('torch._utils', '_rebuild_tensor_v2'),
              (_Storage(key, a.size, a.dtype), 0, a.shape, strides, False,
               collections.OrderedDict()))
    return NotImplemented


def write_torch_zip(path, obj, extra_globals=()):
  """A torch>=1.6 zip checkpoint of `obj` (numpy arrays → tensors) written without torch."""
  wrap = lambda x: (_Tensor(x) if isinstance(x, np.ndarray) else
                    collections.OrderedDict((k, wrap(v)) for k, v in x.items())
                    if isinstance(x, collections.OrderedDict) else
                    {k: wrap(v) for k, v in x.items()} if type(x) is dict else x)
  storages = {}
  import io
  buf = io.BytesIO()
  _TorchPickler(buf, storages).dump(wrap(obj))
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr('best_model/data.pkl', buf.getvalue())
    z.writestr('best_model/byteorder', 'little')
    z.writestr('best_model/version', '3\n')
    for key, raw in storages.items():
      z.writestr(f'best_model/data/{key}', raw)


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


# ---------------------------------------------------------------------------- tests

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

  # ------------------------------------------------------------------ whole models
  @parameterized.product(name=GPT_FILES, case=('', '_shift100'))
  def test_gpt2_logits_match_official(self, name, case):
    d, _, _, _, module, variables = _gpt(name)
    logits, pe = module.apply(variables, jnp.asarray(d['tokens']),
                              jnp.asarray(d[f'positions{case}'])[None])
    self.assertLessEqual(_rel(pe.main_embed[0], d[f'seqpe_out{case}']), 1e-5)
    self.assertLessEqual(_rel(logits, d[f'logits{case}']), 1e-4)

  @parameterized.product(name=VIT_FILES, case=('', '_24', '_start10_20'))
  def test_vit_logits_match_official(self, name, case):
    d, _, _, _, module, variables = _vit(name)
    logits, pe = module.apply(variables, jnp.asarray(d[f'images{case}']),
                              jnp.asarray(d[f'positions{case}'])[None])
    self.assertLessEqual(_rel(pe.main_embed[0], d[f'seqpe_out{case}']), 1e-5)
    self.assertLessEqual(_rel(logits, d[f'logits{case}']), 1e-4)

  def test_tied_lm_head_may_be_absent_but_must_match(self):
    d, model, pe, cj, module, variables = _gpt('official_gpt2_seqpe')
    del model['lm_head.weight']  # what accelerate's save_state writes
    _, v2 = load_official_gpt2(model, pe, pe_config=cj['pe_config'], gpt2_config=cj['gpt2'])
    chex.assert_trees_all_equal(v2, variables)
    model['lm_head.weight'] = model['transformer.wte.weight'] + 1
    with pytest.raises(CheckpointError, match='lm_head.weight differs'):
      load_official_gpt2(model, pe, pe_config=cj['pe_config'], gpt2_config=cj['gpt2'])

  def _assert_one_line(self, error, fn, *needles):
    with pytest.raises(error) as e:
      fn()
    self.assertNotIn('\n', str(e.value))
    for n in needles:
      self.assertIn(n, str(e.value))

  def test_bad_tensors_are_named(self):
    _, model, pe, cj = _load_full('official_vit_seqpe')
    load = lambda m, p: load_official_vit(m, p, pe_config=cj['pe_config_flat'],
                                          vit_config=cj['vit'])
    self._assert_one_line(CheckpointError, lambda: load(
        {k: v for k, v in model.items() if k != 'blocks.1.attn.pe_qk.bias'}, pe),
        "'blocks.1.attn.pe_qk.bias'", 'missing')
    self._assert_one_line(CheckpointError, lambda: load({**model, 'pos_embed': np.zeros(3)}, pe),
                          "'pos_embed'", 'unexpected')
    self._assert_one_line(CheckpointError, lambda: load(
        {**model, 'head.weight': np.zeros((11, 48), np.float32)}, pe),
        "'head.weight'", '(11, 48)', '(10, 48)')
    self._assert_one_line(CheckpointError, lambda: load(model, {**pe, 'extra': np.zeros(1)}),
                          'SeqPE', "'extra'")

  def test_unrepresentable_config_values_are_named(self):
    _, model, pe, cj = _load_full('official_gpt2_seqpe')
    load = lambda p, g: load_official_gpt2(model, pe, pe_config=p, gpt2_config=g)
    pc, gc = cj['pe_config'], cj['gpt2']
    cases = [
        ({**pc, 'PE_APPLY_METHOD': 'rotary'}, gc, 'PE_APPLY_METHOD'),
        ({**pc, 'PE_TYPE': 'vanilla'}, gc, 'PE_TYPE'),
        ({**pc, 'SEQPE_ACTIVATION_FUNCTION': 'relu'}, gc, 'SEQPE_ACTIVATION_FUNCTION'),
        ({k: v for k, v in pc.items() if k != 'SEQPE_MAX_DIGITS'}, gc, 'SEQPE_MAX_DIGITS'),
        (pc, {**gc, 'activation_function': 'relu'}, 'activation_function'),
        (pc, {**gc, 'n_inner': 100}, 'n_inner'),
        (pc, {**gc, 'scale_attn_by_inverse_layer_idx': True}, 'scale_attn_by_inverse_layer_idx'),
    ]
    for p, g, key in cases:
      self._assert_one_line(ConfigError, lambda p=p, g=g: load(p, g), key)

  def test_concat_quirk_configuration_is_refused(self):
    _, model, pe, cj = _load_full('official_gpt2_seqpe_pewidth32_concatquirk')
    self._assert_one_line(
        ConfigError, lambda: load_official_gpt2(model, pe, pe_config=cj['pe_config'],
                                                gpt2_config=cj['gpt2']),
        'PE_OUT_PROJ_DIM=32', 'concatenation branch')

  # ------------------------------------------------------------------ restricted unpickler
  def test_torch_zip_round_trip_without_torch(self):
    tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
    rng = np.random.RandomState(0)
    obj = {'model': collections.OrderedDict(w=rng.randn(3, 5).astype(np.float32),
                                            b=rng.randn(4).astype(np.float16)),
           'pe_model': collections.OrderedDict(x=rng.randn(2, 1, 3).astype(np.float32)),
           'epoch': 7, 'config': _Config(PE_TYPE='seq_pe', MODEL=_Config(NUM_HEADS=3))}
    write_torch_zip(tmp / 'best_model.pth', obj)
    got = convert.load_torch_checkpoint(tmp / 'best_model.pth')
    for group in ('model', 'pe_model'):
      for k, v in obj[group].items():
        np.testing.assert_array_equal(got[group][k], v)
        self.assertEqual(got[group][k].dtype, v.dtype)
    self.assertEqual(got['epoch'], 7)
    self.assertEqual(got['config']['PE_TYPE'], 'seq_pe')
    self.assertEqual(dict(got['config']['MODEL']), {'NUM_HEADS': 3})

  def test_pickles_with_other_globals_are_refused(self):
    tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
    (tmp / 'plain.pth').write_bytes(pickle.dumps({'model': _Evil()}))
    self._assert_one_line(CheckpointError,
                          lambda: convert.load_torch_checkpoint(tmp / 'plain.pth'),
                          'refusing', 'system')
    write_torch_zip(tmp / 'zip.pth', {'model': {'w': np.zeros(2, np.float32)}, 'x': _Evil()})
    self._assert_one_line(CheckpointError, lambda: convert.load_torch_checkpoint(tmp / 'zip.pth'),
                          'refusing', 'system')
    self.assertFalse((tmp / 'pwned').exists())


# ---------------------------------------------------------------------------- CLI

def _run(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=child_env(),
                        capture_output=True, text=True, timeout=500)


class ConvertCliTest(TmpDirTestCase):
  """Tiny official-layout checkpoints on disk → our run dir → `main --mode=eval`."""

  def _restored_params(self, workdir):
    from seqpe_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    ckpt = Checkpointer(workdir, every=1, keep=1, async_save=False, create=False)
    try:
      state = ckpt.manager.restore(0, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
      ckpt.close_quietly()
    return state['state']['params']

  def test_lm_safetensors_to_perplexity_sweep(self):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    _, model, pe, cj = _load_full('official_gpt2_seqpe')
    # The bytes tokenizer (256 ids) evaluates here: a 256-row embedding, the rest as shipped.
    model = dict(model, **{'transformer.wte.weight':
                           np.random.RandomState(0).randn(256, 64).astype(np.float32) * 0.2})
    del model['lm_head.weight']  # accelerate drops the tied tensor
    official = self.tmp / 'official'
    official.mkdir()
    save_file(model, str(official / 'model.safetensors'))
    save_file(pe, str(official / 'model_1.safetensors'))
    (official / 'pe_config.json').write_text(json.dumps(cj['pe_config']))
    (official / 'config.json').write_text(json.dumps({**cj['gpt2'], 'vocab_size': 256}))
    work = self.tmp / 'run'
    p = _run('seqpe_jax.convert', f'--official={official}', '--task=lm', f'--workdir={work}')
    self.assertEqual(p.returncode, 0, p.stderr[-3000:])
    cfg = json.loads((work / 'config.json').read_text())
    self.assertEqual((cfg['data']['name'], cfg['data']['tokenizer']), ('wikitext-2', 'bytes'))
    _, want = load_official_gpt2(model, pe, pe_config=cj['pe_config'],
                                 gpt2_config={**cj['gpt2'], 'vocab_size': 256})
    chex.assert_trees_all_close(self._restored_params(work), want['params'], atol=0)
    p = _run('seqpe_jax.main', f'--config=configs/from_workdir.py:{work}', f'--workdir={work}',
             '--mode=eval', '--config.eval.lengths=(16,32)', '--config.eval.max_tokens=256',
             '--config.eval.batch_size=2')
    self.assertEqual(p.returncode, 0, p.stderr[-3000:])
    self.assertIn('32', (work / 'extrapolation.md').read_text())
    # A second conversion into the same (now non-empty) run dir is refused.
    p = _run('seqpe_jax.convert', f'--official={official}', '--task=lm', f'--workdir={work}')
    self.assertEqual(p.returncode, 2)
    self.assertIn('not empty', p.stderr)

  def test_vit_pth_to_resolution_sweep(self):
    _, model, pe, cj = _load_full('official_vit_seqpe')
    official = self.tmp / 'official'
    official.mkdir()
    write_torch_zip(official / 'best_model.pth', {
        'model': collections.OrderedDict(model), 'pe_model': collections.OrderedDict(pe),
        'max_accuracy': 0.5, 'epoch': 3, 'config': _Config(cj['pe_config_flat'])})
    (official / 'vit_config.json').write_text(json.dumps(cj['vit']))  # PE config: from the pth
    work = self.tmp / 'run'
    p = _run('seqpe_jax.convert', f'--official={official}', '--task=vit', f'--workdir={work}')
    self.assertEqual(p.returncode, 0, p.stderr[-3000:])
    _, want = load_official_vit(model, pe, pe_config=cj['pe_config_flat'], vit_config=cj['vit'])
    chex.assert_trees_all_close(self._restored_params(work), want['params'], atol=0)
    p = _run('seqpe_jax.main', f'--config=configs/from_workdir.py:{work}', f'--workdir={work}',
             '--mode=eval', '--config.eval.image_sizes=(16,24)',
             '--config.data.max_eval_examples=16', '--config.eval.batch_size=8')
    self.assertEqual(p.returncode, 0, p.stderr[-3000:])
    self.assertIn('24', (work / 'extrapolation.md').read_text())


if __name__ == '__main__':
  absltest.main()
