"""Tests for seqpe_jax.generate: cached == uncached decoding for every 1-D PE, the official
cached-bias flag, sampling, EOS, and the CLI on a 2-step smoke run."""

import contextlib
import dataclasses
import io
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from configs import smoke
from seqpe_jax import generate as gen
from seqpe_jax import relbias
from seqpe_jax import main as main_lib
from seqpe_jax import train
from seqpe_jax.errors import ConfigError
from seqpe_jax.gpt import GPT, GPTConfig, init_cache
from seqpe_jax.posenc import PEConfig
from tests.conftest import shared_path
from tests.testutil import TmpDirTestCase

TRAIN_LEN, P, N, V = 16, 10, 20, 40  # decoding runs to position 29, past the training length

VARIANTS = {
    'seqpe_attn_scalar_auto': dict(type='seqpe'),  # reference attention: the shared bias
    'seqpe_attn_scalar_concat': dict(type='seqpe', scalar_form='concat'),
    'seqpe_attn_scalar_bias': dict(type='seqpe', scalar_form='bias'),
    'seqpe_attn_scalar_single_head': dict(type='seqpe', multi_head=False),
    'seqpe_attn_scalar_per_layer_pe_qk': dict(type='seqpe', pe_qk='multi'),
    'seqpe_attn_add': dict(type='seqpe', apply='attn_add'),
    'seqpe_attn_mul': dict(type='seqpe', apply='attn_mul'),
    'seqpe_input_add': dict(type='seqpe', apply='input_add'),
    'learned_interpolated': dict(type='learned'),
    'sinusoidal': dict(type='sinusoidal'),
    'rope': dict(type='rope'),
    'rope_linear': dict(type='rope', rope_scaling='linear', rope_factor=2.0),
    'rope_ntk': dict(type='rope', rope_scaling='ntk', rope_factor=2.0),
    'rope_yarn': dict(type='rope', rope_scaling='yarn', rope_factor=4.0, rope_original_length=16),
    'alibi': dict(type='alibi'),
    'alibi_before_scale': dict(type='alibi', alibi_before_scale=True),
    'nope': dict(type='nope'),
    'fire': dict(type='fire'),
    'fire_threshold_below_the_positions': dict(
        type='fire', options=relbias.FireOptions(init_threshold=6.0)),
    'kerple': dict(type='kerple'),
    'seqpe_attn_scalar_xla_attention': dict(type='seqpe', attention_impl='xla'),
}
# Where the official flag must change cached decoding (and where it must not).
OFFICIAL_CHANGES = ('seqpe_attn_scalar_auto', 'seqpe_attn_scalar_concat',
                    'seqpe_attn_scalar_bias', 'alibi')
OFFICIAL_SAME = ('rope', 'seqpe_attn_mul')


def _model(attention_impl='reference', **pe) -> GPT:
  pe = PEConfig(**{'width': 16, 'heads': 2, 'max_digits': 3, 'dropout': 0.0, **pe})
  # An untied head: with tied embeddings a random-init GPT just repeats its last token.
  return GPT(GPTConfig(vocab_size=V, num_layers=2, width=32, num_heads=4, tie_embeddings=False,
                       attention_impl=attention_impl), pe, train_len=TRAIN_LEN)


def _params(model: GPT):
  """Random params with a strong positional signal (the init's PE terms are ~1e-4 logits)."""
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, TRAIN_LEN), jnp.int32)))

  def sharpen(path, x):
    name = jax.tree_util.keystr(path)
    if any(k in name for k in ("'pe_qk']['kernel'", "'out_proj']['kernel'", "'table'")):
      return x * 30.0
    if "'qkv']['kernel'" in name:
      return x * 4.0
    return x
  return jax.tree_util.tree_map_with_path(sharpen, params)


def _prompt(b=2, p=P):
  return np.asarray(jax.random.randint(jax.random.PRNGKey(0), (b, p), 0, V), np.int32)


class CachedDecodingTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters((name, name, pe) for name, pe in VARIANTS.items())
  def test_cached_equals_uncached(self, name, pe):
    model = _model(**pe)
    params = _params(model)
    prompt = _prompt()
    run = lambda **kw: gen.generate(model, params, prompt, max_new_tokens=N,
                                    return_logits=True, **kw)
    tok_c, logits_c = run(use_cache=True)
    tok_u, logits_u = run(use_cache=False)
    chex.assert_shape(tok_c, (2, N))
    chex.assert_shape(logits_c, (2, N, V))
    np.testing.assert_array_equal(tok_c, tok_u)
    np.testing.assert_allclose(logits_c, logits_u, atol=1e-5, rtol=0)
    self.assertFalse(bool((tok_c == tok_c[:, :1]).all()), 'degenerate test: a constant output')
    if name in OFFICIAL_CHANGES + OFFICIAL_SAME:
      tok_o, logits_o = run(use_cache=True, official_cache_bias=True)
      # The prompt is prefilled in one pass: its bias is the full one, so step 0 agrees.
      np.testing.assert_allclose(logits_o[:, 0], logits_c[:, 0], atol=1e-5, rtol=0)
      diff = float(jnp.abs(logits_o - logits_c).max())
      if name in OFFICIAL_CHANGES:
        self.assertGreater(diff, 1e-2, 'the official flag should drop the positional bias')
      else:
        self.assertLess(diff, 1e-5, 'keys are rotated/modulated before caching: no flaw')


class ExtendTest(chex.TestCase):

  def test_chunked_prefill_equals_one_pass(self):
    model = _model(type='seqpe')
    params = _params(model)
    tokens = _prompt(p=12)
    pe = model.apply(params, jnp.arange(12)[None], method=model.encode_positions)
    full, _ = model.apply(params, tokens, pe=pe)
    rows = lambda a, n: gen._rows(pe, a, n)
    caches = init_cache(model, 2, 16)
    a, caches = model.apply(params, tokens[:, :7], rows(0, 7), caches, method=model.extend)
    b, caches = model.apply(params, tokens[:, 7:], rows(7, 5), caches, method=model.extend)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-5, rtol=0)
    self.assertEqual(int(caches[0].length), 12)
    np.testing.assert_array_equal(caches[0].pos[0, :12], np.arange(12))

  def test_shared_bias_caches_plain_keys_and_decodes_alike(self):
    model = _model(type='seqpe')
    params = _params(model)
    tokens = _prompt(p=12)
    pe = model.apply(params, jnp.arange(16)[None], method=model.encode_positions)
    rows = lambda a, n: gen._rows(pe, a, n)
    full, _ = model.apply(params, tokens, pe=rows(0, 12))
    caches = init_cache(model, 2, 16, shared_bias=True)
    self.assertEqual(caches[0].k.shape[-1], 8)  # [k] only, not [k; PE_k]
    a, caches = model.apply(params, tokens[:, :7], rows(0, 7), caches, pe, method=model.extend)
    b, _ = model.apply(params, tokens[:, 7:], rows(7, 5), caches, pe, method=model.extend)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-5, rtol=0)
    with self.assertRaisesRegex(ValueError, 'shared_bias=True goes with key_pe'):
      model.apply(params, tokens, rows(0, 12), init_cache(model, 2, 16), pe,
                  method=model.extend)


  def test_a_given_pe_table_decodes_alike_and_must_match_the_length(self):
    for kw in (dict(type='seqpe'), dict(type='learned'), dict(type='nope')):
      model = _model(**kw)
      params = _params(model)
      prompt = _prompt(p=20)  # 20 + 8 positions: past a learned table's training size
      table = gen.position_table(model, params, 28)
      np.testing.assert_array_equal(
          gen.generate(model, params, prompt, max_new_tokens=8, pe_table=table),
          gen.generate(model, params, prompt, max_new_tokens=8))
      if kw['type'] != 'nope':  # NoPE's table has no rows to check
        with self.assertRaisesRegex(ConfigError, 'needs exactly 28'):
          gen.generate(model, params, prompt, max_new_tokens=8,
                       pe_table=gen.position_table(model, params, 30))

  def test_remat_model_decodes_alike(self):
    base = _model(type='seqpe')
    remat = GPT(dataclasses.replace(base.cfg, remat=True), base.pe, train_len=TRAIN_LEN)
    params = _params(base)
    np.testing.assert_array_equal(gen.generate(remat, params, _prompt(), max_new_tokens=4),
                                  gen.generate(base, params, _prompt(), max_new_tokens=4))


class SamplingTest(chex.TestCase):

  def test_sampling_is_deterministic_and_respects_top_k(self):
    model = _model(type='rope')
    params = _params(model)
    prompt = _prompt()
    draw = lambda seed, **kw: gen.generate(
        model, params, prompt, max_new_tokens=N, temperature=2.0, top_k=3,
        rng=jax.random.PRNGKey(seed), return_logits=True, **kw)
    tok_a, logits_a = draw(0)
    tok_b, _ = draw(0)
    tok_c, _ = draw(1)
    np.testing.assert_array_equal(tok_a, tok_b)
    self.assertFalse(bool((tok_a == tok_c).all()), 'another key should sample differently')
    top3 = jax.lax.top_k(logits_a, 3)[1]
    self.assertTrue(bool((top3 == tok_a[..., None]).any(-1).all()), 'a token outside the top 3')
    greedy = gen.generate(model, params, prompt, max_new_tokens=N)
    self.assertFalse(bool((tok_a == greedy).all()), 'temperature 2 should leave greedy')
    tok_u, _ = draw(0, use_cache=False)
    np.testing.assert_array_equal(tok_a, tok_u)

  def test_eos_stops_each_row(self):
    model = _model(type='rope')
    params = _params(model)
    prompt = _prompt(b=1)[0]
    greedy = np.asarray(gen.generate(model, params, prompt, max_new_tokens=N))
    chex.assert_shape(greedy, (N,))
    eos = int(greedy[3])
    first = int(np.argmax(greedy == eos))
    out = np.asarray(gen.generate(model, params, prompt, max_new_tokens=N, eos_id=eos))
    np.testing.assert_array_equal(out[:first + 1], greedy[:first + 1])
    self.assertTrue((out[first:] == eos).all())

  def test_user_errors(self):
    small = _model(type='seqpe', max_digits=2)  # positions < 100
    params = _params(small)
    with self.assertRaisesRegex(ConfigError, 'needs position 104, beyond the SeqPE digit'):
      gen.generate(small, params, _prompt(p=95), max_new_tokens=10)
    with self.assertRaisesRegex(ConfigError, 'max_new_tokens must be positive'):
      gen.generate(small, params, _prompt(p=2), max_new_tokens=0)
    with self.assertRaisesRegex(ConfigError, 'GPT language model'):
      gen.generate(object(), params, _prompt(p=2), max_new_tokens=2)
    with self.assertRaisesRegex(ConfigError, r'token ids must lie in \[0, 40\)'):
      gen.generate(small, params, np.array([1, 99]), max_new_tokens=2)


class CLITest(TmpDirTestCase):

  def _cli(self, *args):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        gen.cli(['generate', *args])
      except SystemExit as e:
        code = e.code
    return code, out.getvalue(), err.getvalue()

  def assertCliError(self, needle, *args):
    code, out, err = self._cli(*args)
    self.assertEqual(code, 2, err)
    self.assertEqual(out, '')
    self.assertEqual(len(err.strip().splitlines()), 1, err)
    self.assertTrue(err.startswith('error: '), err)
    self.assertIn(needle, err)

  def test_cli_end_to_end(self):
    shared_path('data', 'wikitext-2')
    workdir = self.tmp / 'run'
    config = smoke.get_config()
    config.train.update(steps=2, checkpoint_every=2)
    config.mesh.num_devices = 1
    run = main_lib.build_run(config, str(workdir))
    run.workdir.mkdir(parents=True)
    state, _ = train.train(run)

    out_json = self.tmp / 'out.json'
    code, out, err = self._cli(f'--workdir={workdir}', '--prompt=The game', '--max_new_tokens=8',
                               f'--output={out_json}')
    self.assertEqual(code, 0, err)
    saved = json.loads(out_json.read_text())
    self.assertEqual(saved['prompt'], 'The game')
    self.assertLen(saved['tokens'], 8)
    self.assertEqual(saved['text'], run.data.tokenizer.decode(saved['tokens']))
    self.assertEqual(out.rstrip('\n'), saved['text'])
    self.assertEqual(saved['step'], 2)
    ids = run.data.tokenizer.encode('The game')
    direct = gen.generate(run.task, state.params, ids, max_new_tokens=8)
    self.assertEqual(saved['tokens'], [int(t) for t in direct])

    uncached = self.tmp / 'uncached.json'
    code, _, err = self._cli(f'--workdir={workdir}', '--prompt=The game', '--max_new_tokens=8',
                             '--use_cache=false', f'--output={uncached}')
    self.assertEqual(code, 0, err)
    self.assertEqual(json.loads(uncached.read_text())['tokens'], saved['tokens'])

    # User mistakes: one `error:` line, exit 2.
    self.assertCliError('is not a directory', f'--workdir={self.tmp / "nothere"}', '--prompt=a')
    self.assertCliError('no config.json', f'--workdir={self.tmp}', '--prompt=a')
    self.assertCliError('beyond the SeqPE digit capacity', f'--workdir={workdir}', '--prompt=a',
                        '--max_new_tokens=10000')
    self.assertCliError('--prompt is required', f'--workdir={workdir}')
    self.assertCliError("Unknown command line flag 'foo'", f'--workdir={workdir}', '--foo=1')
    empty = self.tmp / 'empty'
    empty.mkdir()
    (empty / 'config.json').write_text((workdir / 'config.json').read_text())
    self.assertCliError('no checkpoint in', f'--workdir={empty}', '--prompt=a')
    vit = self.tmp / 'vit'
    vit.mkdir()
    (vit / 'config.json').write_text(json.dumps({'task': 'vit'}))
    self.assertCliError("holds a 'vit' run", f'--workdir={vit}', '--prompt=a')


if __name__ == '__main__':
  absltest.main()
