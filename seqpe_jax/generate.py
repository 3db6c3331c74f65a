r"""Autoregressive generation with the GPT LM: KV-cached (default) or full recompute.

  python -m seqpe_jax.generate --workdir=runs/wt2 --prompt='The meaning of' \
      --max_new_tokens=64 [--temperature=0.8 --top_k=40 --seed=0] [--use_cache=false] \
      [--official_cache_bias] [--eos_id=N] [--output=out.json]

The position encoding of every position `0..T-1` (T = prompt + new tokens) is
computed ONCE before decoding (`position_table`: one SeqPE encoder call; a
learned table is resized to T when T exceeds its size, as evaluation does at
length T), or passed in (`pe_table=`, to decode many prompts of one length
without encoding again); each step then uses the rows of its new positions.
The prompt is prefilled in one pass, then one token per step inside a jitted
`lax.while_loop`.

Cached decoding keeps each layer's keys as attention sees them (rotated for
RoPE, `[k; PE_k]` for SeqPE attn_scalar, ...), their positions (ALiBi) and
values, so it equals recomputing the whole sequence every step
(`use_cache=False`). `official_cache_bias=True` reproduces the released
code's cached decoding instead (method doc §12): the SeqPE attn_scalar bias
(and ALiBi's) of a decode step is computed from the new token alone, one
constant over its key row, so generated tokens get no positional signal from
it. It only changes cached decoding.

Exit codes as `seqpe_jax.main`: 0 done, 2 `error: ...` (a missing workdir or
checkpoint, a ViT run, a prompt past the SeqPE digit capacity, bad flags).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax import lax

from seqpe_jax.errors import CheckpointError, ConfigError, UserError
from seqpe_jax.gpt import GPT, GPTConfig, init_cache
from seqpe_jax.posenc import PEConfig, PEOutput
from seqpe_jax.positions import digits_needed


def generate(task_or_model: Any, params: Any, prompt_tokens: Any, *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, use_cache: bool = True,
             official_cache_bias: bool = False, rng: jax.Array | None = None,
             eos_id: int | None = None, return_logits: bool = False,
             pe_table: PEOutput | None = None
             ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Continues `prompt_tokens` (`[P]` or `[B, P]` int ids) by `max_new_tokens` tokens.

  Args:
    task_or_model: an LM `tasks.Task` or a `GPT` module.
    params: its parameters (`{'params': ...}` or the inner tree; boxed or not).
    temperature: 0 is greedy (argmax); otherwise sample softmax(logits / T).
    top_k: sample among the k most likely tokens only (0: all).
    use_cache: KV-cached decoding (else recompute the full sequence every step).
    official_cache_bias: reproduce the official cached-decoding flaw (module doc).
    rng: PRNG key for sampling (default `PRNGKey(0)`); step i uses `fold_in(rng, i)`.
    eos_id: stop a row at this token (later tokens of that row are eos_id);
      the loop ends once every row has stopped.
    return_logits: also return each step's logits (before temperature / top-k).
    pe_table: `position_table(model, params, P + N)`, to decode many prompts of one total
      length without encoding the positions again (the table depends on the parameters and
      that length only); encoded here when None.

  Returns:
    The new tokens `[N]` or `[B, N]` (int32), and with `return_logits` the
    logits `[N, V]` / `[B, N, V]` (float32; zeros after an early stop).
  """
  model = _gpt(task_or_model)
  prompt = np.asarray(prompt_tokens)
  squeeze = prompt.ndim == 1
  prompt_BxL = prompt[None] if squeeze else prompt
  if prompt_BxL.ndim != 2 or prompt_BxL.shape[1] < 1 or not np.issubdtype(prompt.dtype,
                                                                          np.integer):
    raise ConfigError(f'the prompt must be a non-empty [P] or [B, P] array of token ids, got '
                      f'shape {prompt.shape} ({prompt.dtype})')
  if int(max_new_tokens) < 1:
    raise ConfigError(f'max_new_tokens must be positive, got {max_new_tokens}')
  vocab = model.cfg.vocab_size
  if prompt_BxL.min() < 0 or prompt_BxL.max() >= vocab:
    raise ConfigError(f'prompt token ids must lie in [0, {vocab})')
  p, n = prompt_BxL.shape[1], int(max_new_tokens)
  check_length(model.pe, p, n)
  if rng is None:
    rng = jax.random.PRNGKey(0)
  top_k = min(int(top_k), vocab) if top_k and top_k > 0 else 0
  fn = _decoder(model.cfg, model.pe, model.train_len, bool(official_cache_bias), p, n,
                float(temperature), top_k, bool(use_cache),
                None if eos_id is None else int(eos_id), bool(return_logits))
  variables = _variables(params)
  if pe_table is None:
    pe_table = _table_fn(model.cfg, model.pe, model.train_len, p + n)(variables)
  else:
    sizes = {x.shape[1] for x in jax.tree.leaves(pe_table.ctx)}
    if sizes - {p + n}:  # (a PE without context arrays, e.g. NoPE, has no sizes)
      raise ConfigError(f'pe_table covers {sorted(sizes)} positions; this call needs exactly '
                        f'{p + n} (prompt {p} + {n} new tokens): make it with '
                        f'position_table(model, params, {p + n})')
  out = fn(variables, jnp.asarray(prompt_BxL, jnp.int32), rng, pe_table)
  if squeeze:
    out = jax.tree.map(lambda x: x[0], out)
  return out


def position_table(task_or_model: Any, params: Any, length: int) -> PEOutput:
  """The position encoding of positions `0..length-1`, as `generate` uses it (one SeqPE
  encoder call; a learned table resized to `length` when longer than its size). Exactly
  `length` rows: a learned table's resize depends on it, so a longer table's prefix differs."""
  model = _gpt(task_or_model)
  if int(length) < 1:
    raise ConfigError(f'the table length must be positive, got {length}')
  check_length(model.pe, int(length), 0)
  return _table_fn(model.cfg, model.pe, model.train_len, int(length))(_variables(params))


def _gpt(task_or_model: Any) -> GPT:
  """The `GPT` of an LM task (or the module itself); ConfigError for anything else."""
  model = getattr(task_or_model, 'model', task_or_model)
  if not isinstance(model, GPT):
    raise ConfigError(f'generation needs a GPT language model, got {type(model).__name__}')
  return model


def _variables(params: Any) -> dict:
  variables = nn.meta.unbox(params)
  if not (isinstance(variables, dict) and set(variables) == {'params'}):
    variables = {'params': variables}
  return variables


@functools.lru_cache(maxsize=64)
def _table_fn(cfg: GPTConfig, pe_cfg: PEConfig, train_len: int, length: int):
  """The jitted `variables -> PEOutput` of positions `0..length-1` (cached by shape)."""
  model = GPT(cfg, pe_cfg, train_len=train_len)
  positions_1xS = jnp.arange(length, dtype=jnp.int32)[None]
  return jax.jit(lambda variables: model.apply(variables, positions_1xS,
                                               method=model.encode_positions))


def check_length(pe: PEConfig, prompt_len: int, max_new_tokens: int) -> None:
  """Raises `ConfigError` if positions up to prompt + new - 1 exceed the PE's capacity
  (`PEType.position_capacity`: SeqPE's digits; the other types are unbounded)."""
  cap = pe.cls.position_capacity(pe)
  last = prompt_len + max_new_tokens - 1
  if cap is not None and last >= cap:
    raise ConfigError(
        f'a prompt of {prompt_len} tokens + {max_new_tokens} new tokens needs position {last}, '
        f'beyond the SeqPE digit capacity [0, {cap}) of '
        f'max_digits={pe.max_digits} (would need {digits_needed(last)}); shorten the prompt or '
        'max_new_tokens')


def sample(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Greedy (`temperature <= 0`) or temperature / top-k sampling: int32 `[B]`."""
  if temperature <= 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k > 0:
    kth_Bx1 = lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def _rows(pe: PEOutput, start: jax.Array | int, size: int) -> PEOutput:
  """The PE rows of positions `start..start+size-1` (every context array is `[P, L, ...]`)."""
  ctx = jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, size, axis=1), pe.ctx)
  return PEOutput(ctx=ctx)


@functools.lru_cache(maxsize=64)
def _decoder(cfg: GPTConfig, pe_cfg: PEConfig, train_len: int, official: bool, p: int, n: int,
             temperature: float, top_k: int, use_cache: bool, eos_id: int | None,
             return_logits: bool):
  """The jitted `(variables, prompt_BxL, rng, pe) -> tokens_BxG [, logits_BxGxV]` (cached
  by shape); `pe` is the `position_table` of all `p + n` positions."""
  model = GPT(cfg, pe_cfg, train_len=train_len, official_cache_bias=official)
  total = p + n

  def run(variables, prompt_BxL, rng, pe):
    b = prompt_BxL.shape[0]
    if use_cache:
      logits_BxLxV, carry = model.apply(variables, prompt_BxL, _rows(pe, 0, p),
                                        init_cache(model, b, total, shared_bias=True), pe,
                                        method=model.extend)
      first_BxV = logits_BxLxV[:, -1]

      def step(caches, tok_B, i):  # token i sits at position p + i
        logits_Bx1xV, caches = model.apply(variables, tok_B[:, None], _rows(pe, p + i, 1),
                                           caches, pe, method=model.extend)
        return caches, logits_Bx1xV[:, 0]
    else:
      carry = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt_BxL)
      first_BxV = model.apply(variables, carry, pe=pe)[0][:, p - 1]

      def step(buf_BxS, tok_B, i):
        buf_BxS = lax.dynamic_update_slice(buf_BxS, tok_B[:, None], (0, p + i))
        logits_BxSxV = model.apply(variables, buf_BxS, pe=pe)[0]
        return buf_BxS, lax.dynamic_index_in_dim(logits_BxSxV, p + i, 1, keepdims=False)

    fill = 0 if eos_id is None else eos_id
    draw = lambda logits_BxV, i: sample(logits_BxV, jax.random.fold_in(rng, i), temperature,
                                        top_k)
    tok_B = draw(first_BxV, 0)
    tokens_BxG = jnp.full((b, n), fill, jnp.int32).at[:, 0].set(tok_B)
    logits_BxGxV = None
    if return_logits:
      logits_BxGxV = jnp.zeros((b, n, first_BxV.shape[-1]), jnp.float32).at[:, 0].set(first_BxV)
    done_B = tok_B == fill if eos_id is not None else jnp.zeros((b,), bool)

    def cond(state):
      i, _, _, done_B, _ = state
      return (i < n) & ~done_B.all() if eos_id is not None else i < n

    def body(state):
      i, tokens_BxG, logits_BxGxV, done_B, carry = state
      carry, logits_BxV = step(carry, tokens_BxG[:, i - 1], i - 1)
      tok_B = draw(logits_BxV, i)
      if eos_id is not None:
        tok_B = jnp.where(done_B, fill, tok_B)
        done_B = done_B | (tok_B == fill)
      tokens_BxG = lax.dynamic_update_slice(tokens_BxG, tok_B[:, None], (0, i))
      if logits_BxGxV is not None:
        logits_BxGxV = lax.dynamic_update_slice(logits_BxGxV, logits_BxV[:, None], (0, i, 0))
      return i + 1, tokens_BxG, logits_BxGxV, done_B, carry

    state = (jnp.ones((), jnp.int32), tokens_BxG, logits_BxGxV, done_B, carry)
    _, tokens_BxG, logits_BxGxV, _, _ = lax.while_loop(cond, body, state)
    return (tokens_BxG, logits_BxGxV) if return_logits else tokens_BxG

  return jax.jit(run)


# ---------------------------------------------------------------------------- CLI

FLAGS = flags.FlagValues()  # its own flag set: importing this module defines no global flags
flags.DEFINE_string('workdir', None, 'Training run directory (config.json + checkpoints/).',
                    flag_values=FLAGS)
flags.DEFINE_string('prompt', None, 'Prompt text (encoded with the run\'s tokenizer).',
                    flag_values=FLAGS)
flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate.', flag_values=FLAGS)
flags.DEFINE_float('temperature', 0.0, '0: greedy; else the sampling temperature.',
                   flag_values=FLAGS)
flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0: all).',
                     flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Sampling seed.', flag_values=FLAGS)
flags.DEFINE_bool('use_cache', True, 'KV-cached decoding (false: full recompute per token).',
                  flag_values=FLAGS)
flags.DEFINE_bool('official_cache_bias', False, 'Reproduce the official cached-decoding flaw '
                  '(constant SeqPE attn_scalar / ALiBi bias per decode step).', flag_values=FLAGS)
flags.DEFINE_integer('eos_id', None, 'Stop at this token id.', flag_values=FLAGS)
flags.DEFINE_string('output', None, 'Write {"prompt", "tokens", "text", ...} JSON here.',
                    flag_values=FLAGS)


def load_run(workdir: str):
  """`(run, params, step)` of the newest checkpoint of an LM training run (UserError if not)."""
  import ml_collections

  from seqpe_jax import main as main_lib
  from seqpe_jax.checkpoint import has_checkpoint
  from seqpe_jax.tasks import kind_of
  from seqpe_jax.train import restore_params

  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise UserError(f'--workdir={workdir} is not a directory')
  cfg_path = path / 'config.json'
  if not cfg_path.is_file():
    raise CheckpointError(f'no config.json in {workdir}; is it a training run directory?')
  try:
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
  except (OSError, ValueError, TypeError) as e:
    raise CheckpointError(f'{cfg_path} is unreadable ({type(e).__name__}: {e})') from None
  task = config.get('task')
  if not kind_of(task).generates:
    raise ConfigError(f'{workdir} holds a {task!r} run; generation needs a language-model '
                      'run (task=lm)')
  if not has_checkpoint(path):
    raise CheckpointError(f'no checkpoint in {path / "checkpoints"}; train first')
  run = main_lib.build_run(config, workdir, mode='eval')
  params, step = restore_params(run)
  return run, params, step


def _generate_cli() -> dict:
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/wt2')
  if FLAGS.prompt is None:
    raise UserError('--prompt is required')
  if FLAGS.max_new_tokens < 1:
    raise UserError(f'--max_new_tokens must be positive, got {FLAGS.max_new_tokens}')
  if FLAGS.temperature < 0 or FLAGS.top_k < 0:
    raise UserError('--temperature and --top_k must be non-negative')
  run, params, step = load_run(FLAGS.workdir)
  tokenizer = run.data.tokenizer
  ids = np.asarray(tokenizer.encode(FLAGS.prompt), np.int32)
  if ids.size == 0:
    raise UserError('--prompt encodes to no tokens')
  check_length(run.task.pe, int(ids.size), FLAGS.max_new_tokens)
  tokens = generate(run.task, params, ids, max_new_tokens=FLAGS.max_new_tokens,
                    temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                    use_cache=FLAGS.use_cache, official_cache_bias=FLAGS.official_cache_bias,
                    rng=jax.random.PRNGKey(FLAGS.seed), eos_id=FLAGS.eos_id)
  tokens = [int(t) for t in np.asarray(tokens)]
  return {'prompt': FLAGS.prompt, 'tokens': tokens, 'text': tokenizer.decode(tokens),
          'prompt_tokens': [int(t) for t in ids], 'step': int(step),
          'use_cache': FLAGS.use_cache, 'official_cache_bias': FLAGS.official_cache_bias,
          'temperature': FLAGS.temperature, 'top_k': FLAGS.top_k}


def cli(argv: list[str]) -> None:
  """The command line (module doc); user mistakes exit 2 with one `error:` line."""
  from absl import logging as absl_logging

  from seqpe_jax.main import _fail
  FLAGS.unparse_flags()  # a fresh parse on every call (tests call `cli` repeatedly)
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, 2)
  if len(rest) > 1:
    _fail(f'unexpected positional arguments: {" ".join(rest[1:])}', 2)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl logging (orbax) expects parsed global flags
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    out = _generate_cli()
  except UserError as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code)
  print(out['text'], flush=True)
  if FLAGS.output:
    pathlib.Path(FLAGS.output).write_text(json.dumps(out, indent=2) + '\n')


if __name__ == '__main__':
  cli(sys.argv)
