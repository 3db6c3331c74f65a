r"""Training-step, evaluation and decoding cost of each position encoding, in ONE process.

Every variant is built once (its own task, sharded state and jitted train step) on the same
backbone, batch and mesh; compile time is measured apart (`.lower(...).compile()`); then the
variants are timed INTERLEAVED and repeated (round r: A B C, A B C, ...), `--steps` steps per
variant per round with `block_until_ready`, and the per-step median / min / max over rounds
is reported. Synthetic token batches (no data loading), the real train step (SeqPE encoder,
regularisers, random shifts, clipping, AdamW).

  # the CPU config (configs/lm_wikitext2.py), all PEs and SeqPE's ablations:
  python benchmarks/throughput.py --profile=cpu --steps=5 --repeats=3
  # GPT-2 small at 512 / 1024 on CPU (fp32, batch 2: seconds per step):
  python benchmarks/throughput.py --profile=gpt2_512 --steps=2 --repeats=2 \
      --variants=seqpe,rope,learned
  # an accelerator: the GPT-2 small recipe at bf16, fused attention, 8 sequences per device:
  python benchmarks/throughput.py --profile=device --length=1024 --peak_tflops=989
  # the official per-device sampler counts (16 pivots / OOD items / shift sets per device):
  python benchmarks/throughput.py --profile=device --per_device_counts

Variants are `pe[:attention_impl][+key=value...]` (dotted config keys, each after a `+`),
e.g. `seqpe`, `rope:fused`, `seqpe+aux.num_pivots=64+model.attn_dropout=0`, or a named SeqPE
ablation:

  seqpe-noct     aux.contrastive_weight=0        (no contrastive regulariser)
  seqpe-noood    aux.ood_weight=0                (no OOD distillation)
  seqpe-noshift  aux.shift_rate=0                (no random-shift branch, no lax.cond)
  seqpe-noshift-remat  and aux.encoder_remat=full  (an unshifted step's arithmetic: the
                 cond's default branch rematerialises the encoder)
  seqpe-noaux    all three off                   (the bare encoder + injection)
  seqpe-shift1   aux.shift_rate=1                (forced shift: every step takes the branch)
  seqpe-shift0   aux.shift_rate=1e-9             (forced default: the cond is compiled in,
                                                  the branch is (almost) never taken)
  seqpe-plain    pe.seqpe.share_prefixes=False, pe.seqpe.scalar_form=concat (the encoder on
                 one digit sequence per position and q·k widened in every layer: SeqPE as
                 it was before the prefix tree and the shared attn_scalar bias)

Where SeqPE's extra time goes (`shares` in the JSON, fractions of the `seqpe` step, each
from two variants timed in the same run; t[v] is the median ms/step of v):

  encoder      (t[seqpe-noaux] - t[nope]) / t[seqpe]    encoder fwd+bwd, its injection and
                                                         its optimizer group, vs no PE at all
  contrastive  (t[seqpe] - t[seqpe-noct]) / t[seqpe]
  ood          (t[seqpe] - t[seqpe-noood]) / t[seqpe]
  shift        (t[seqpe] - t[seqpe-noshift]) / t[seqpe]  with the real sampler (the config's
                                                         aux.shift_rate)
  shift_step_ms      t[seqpe-shift1] - t[seqpe-shift0]   a shifted over a default step
  cond_overhead_ms   t[seqpe-shift0] - t[seqpe-noshift]  the cond + rematerialised branches
                                                         on a step that does not shift

The regularisers share one encoder call with the main positions, so the shares are not
additive. With the real sampler the number of shifted steps per timed window varies; each
row reports the shifted fraction it actually saw (`shifted_frac`), and with `seqpe-shift0`
and `seqpe-shift1` in the run the expected step at the configured rate is
`expected_seqpe_ms` = (1 - rate) t[seqpe-shift0] + rate t[seqpe-shift1] (`expected_ratio_rope`
over t[rope]): the figure to compare, since a few timed steps rarely hit the rate.

Ratios are time ratios: `ratio_rope` = ms/step of the row / ms/step of `rope` (1.2 = 20%
slower), likewise `ratio_learned`; evaluation ratios are to learned APE, decoding ratios are
throughput ratios (decode tok/s of the row / of rope).

Peak memory per step: the compiled step's `memory_analysis()` (argument + output - aliased +
temp bytes), on every platform (`peak_mem_source: memory_analysis`). Where the device has
`memory_stats()` (GPU / TPU) the JSON also gives `device_peak_bytes`, its `peak_bytes_in_use`
after the variant's warm-up; that high-water mark is process-wide (never reset), so it also
covers the variants built before it.

Evaluation: for each variant the PE is encoded ONCE per length (1x and 4x the training
length, `evaluate._jitted('encode')`) and the jitted eval step (`evaluate._jitted('lm')`) is
timed on one eval batch with that cached PE. Decoding: greedy KV-cached
`seqpe_jax.generate.generate` tokens/s (batch `--decode_batch`, prefill included) with the PE
table of the generation length encoded once per variant (`generate.position_table`, as
evaluation caches it; its own time is `decode_table_ms`), when that module exists; otherwise
`null` with a note.

Arithmetic: `step_gflop` is XLA's FLOP count of the compiled step (`cost_analysis()`; all of
it: the encoder, regularisers and optimizer included; a `lax.cond` counts its costlier branch,
so every SeqPE variant with random shifts reports its shifted step), `gflop_ratio_rope` the
ratio to rope's. Where the step is bound by arithmetic (CPU), the time ratio follows it;
`seqpe-noshift-remat` gives an unshifted step's count (no cond, the encoder rematerialised as
in the cond's default branch).

MFU (with `--peak_tflops`): model FLOPs per token = 6 N + 12 * layers * width * length
(`tasks.model_flops_per_token`: N all parameters, the attention scores and values term
added), times tokens/s, over the peak. It counts neither the SeqPE encoder's position work
nor the regularisers, so SeqPE's MFU is the backbone's useful work.

`--batch` keeps every batch-dependent setting valid: train.batch_size = batch, and
aux.shift_sets (which must divide the (micro-)batch per data-parallel replica set) becomes
gcd(shift_sets, batch / grad_accum) (per device with aux.counts_per_device); the change is
printed and recorded in `meta.adjusted`. The eval batch (`--eval_batch`, default the
config's) is rounded up to a multiple of the data-parallel size, as evaluation does.

Output: `--output` (default benchmarks/results/throughput.json, `{"meta", "rows", "shares"}`)
and the markdown table beside it (`.md`), also printed.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from seqpe_jax import evaluate, optim, sharding, train  # noqa: E402
from seqpe_jax.tasks import Task, count_params, model_flops_per_token  # noqa: E402

# Named SeqPE ablations: alias -> (pe type, overrides).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    'seqpe-noct': ('seqpe', {'aux.contrastive_weight': 0.0}),
    'seqpe-noood': ('seqpe', {'aux.ood_weight': 0.0}),
    'seqpe-noshift': ('seqpe', {'aux.shift_rate': 0.0}),
    'seqpe-noshift-remat': ('seqpe', {'aux.shift_rate': 0.0, 'aux.encoder_remat': 'full'}),
    'seqpe-noaux': ('seqpe', {'aux.contrastive_weight': 0.0, 'aux.ood_weight': 0.0,
                              'aux.shift_rate': 0.0}),
    'seqpe-shift1': ('seqpe', {'aux.shift_rate': 1.0}),
    'seqpe-shift0': ('seqpe', {'aux.shift_rate': 1e-9}),
    'seqpe-plain': ('seqpe', {'pe.seqpe.share_prefixes': False,
                              'pe.seqpe.scalar_form': 'concat'}),
}
ALL_VARIANTS = ('seqpe', 'rope', 'alibi', 'learned', 'nope', 'seqpe-noaux', 'seqpe-noct',
                'seqpe-noood', 'seqpe-noshift', 'seqpe-shift1', 'seqpe-shift0')


@dataclasses.dataclass(frozen=True)
class Profile:
  """A named benchmark setting (each field a default a flag may override)."""

  config: str
  batch_cpu: int = 0         # global batch on CPU (0: the config's)
  batch_per_device: int = 0  # sequences per device on an accelerator (0: batch_cpu / config)
  steps: int = 10
  repeats: int = 3
  variants: tuple[str, ...] = ('seqpe', 'rope', 'learned')
  overrides: tuple[tuple[str, Any], ...] = ()
  fp32_on_cpu: bool = False


PROFILES = {
    'cpu': Profile('configs/lm_wikitext2.py', steps=20, repeats=5, variants=ALL_VARIANTS),
    'gpt2_512': Profile('configs/lm_wikitext103.py', batch_cpu=2, batch_per_device=8, steps=2,
                        repeats=2, fp32_on_cpu=True),
    'gpt2_1024': Profile('configs/lm_wikitext103.py:len=1024', batch_cpu=2, batch_per_device=8,
                         steps=2, repeats=2, fp32_on_cpu=True),
    'device': Profile('configs/lm_wikitext103.py', batch_cpu=2, batch_per_device=8, steps=20,
                      repeats=5, overrides=(('model.dtype', 'bfloat16'),
                                            ('model.attention_impl', 'fused'))),
}


def define_flags(fv: flags.FlagValues) -> None:
  """The CLI flags, on a private FlagValues (so importing this module defines nothing)."""
  flags.DEFINE_enum('profile', 'cpu', list(PROFILES), 'Benchmark profile (module doc).',
                    flag_values=fv)
  flags.DEFINE_string('config', '', 'Config file[:arg] instead of the profile\'s.',
                      flag_values=fv)
  flags.DEFINE_multi_string('override', [], 'key=value config override for every variant '
                            '(dotted keys, e.g. mesh.num_devices=1).', flag_values=fv)
  flags.DEFINE_list('variants', [], 'pe[:attention_impl][+key=value,...] or a named SeqPE '
                    'ablation (module doc); default: the profile\'s.', flag_values=fv)
  flags.DEFINE_integer('batch', 0, 'Global train batch (0: the profile\'s); shift_sets follows.',
                       flag_values=fv)
  flags.DEFINE_integer('length', 0, 'Training length (0: the profile\'s).', flag_values=fv)
  flags.DEFINE_integer('steps', 0, 'Timed steps per variant per round (0: the profile\'s).',
                       flag_values=fv)
  flags.DEFINE_integer('repeats', 0, 'Interleaved rounds (0: the profile\'s).', flag_values=fv)
  flags.DEFINE_integer('warmup', 2, 'Untimed steps per variant after compiling.',
                       flag_values=fv)
  flags.DEFINE_bool('per_device_counts', False, 'aux.num_pivots / ood_items / shift_sets = 16 '
                    'with aux.counts_per_device=True (the official per-GPU samplers).',
                    flag_values=fv)
  flags.DEFINE_bool('eval', True, 'Time the cached-PE evaluation forward at 1x and 4x.',
                    flag_values=fv)
  flags.DEFINE_list('eval_variants', [], 'Variants whose evaluation is timed (default: all).',
                    flag_values=fv)
  flags.DEFINE_integer('eval_batch', 0, 'Eval batch (0: the config\'s eval.batch_size).',
                       flag_values=fv)
  flags.DEFINE_integer('eval_steps', 3, 'Timed eval batches per variant, length and round.',
                       flag_values=fv)
  flags.DEFINE_bool('decode', True, 'Time KV-cached greedy decoding (if seqpe_jax.generate '
                    'exists).', flag_values=fv)
  flags.DEFINE_list('decode_variants', [], 'Variants whose decoding is timed (default: all).',
                    flag_values=fv)
  flags.DEFINE_integer('decode_batch', 1, 'Decoding batch.', flag_values=fv)
  flags.DEFINE_integer('decode_prompt', 16, 'Decoding prompt tokens.', flag_values=fv)
  flags.DEFINE_integer('decode_tokens', 64, 'New tokens per decoding call.', flag_values=fv)
  flags.DEFINE_float('peak_tflops', 0.0, 'Peak device TFLOP/s for MFU (H100 SXM bf16 dense: '
                     '989; 0: skip).', flag_values=fv)
  flags.DEFINE_string('output', str(REPO / 'benchmarks/results/throughput.json'),
                      'JSON output (the markdown table goes beside it, .md).', flag_values=fv)
  flags.DEFINE_string('trace_dir', '', 'After timing, record a jax.profiler trace of '
                      '--trace_steps train steps of each --trace_variants variant under '
                      '<trace_dir>/<variant>/ (read it with benchmarks/trace_summary.py).',
                      flag_values=fv)
  flags.DEFINE_list('trace_variants', [], 'Variants to trace (default: all).', flag_values=fv)
  flags.DEFINE_integer('trace_steps', 2, 'Train steps per trace.', flag_values=fv)


# ---------------------------------------------------------------------------- config

def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path.py[:arg]` (relative paths: to the cwd, else to the repo) → `get_config(arg)`."""
  path, _, arg = spec.partition(':')
  p = pathlib.Path(path)
  if not p.exists():
    p = REPO / path
  mod_spec = importlib.util.spec_from_file_location(f'_bench_config_{p.stem}', p)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets a dotted key, coercing to the existing field's type (int → float, str → bool)."""
  *parents, leaf = key.split('.')
  node = config
  for k in parents:
    node = node[k]
  if isinstance(value, str):
    value = _parse_value(value)
  old = node.get(leaf)
  if isinstance(old, bool):
    value = value if isinstance(value, bool) else str(value).lower() in ('1', 'true', 'yes')
  elif isinstance(old, float) and isinstance(value, (int, float)):
    value = float(value)
  elif isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  node[leaf] = value


def parse_variant(spec: str) -> tuple[str, str, dict[str, Any]]:
  """`pe[:impl][+k=v,...]` or a named ablation → (pe type, impl or '', overrides)."""
  head, _, rest = spec.partition('+')
  name, _, impl = head.partition(':')
  if name in ABLATIONS:
    pe, overrides = ABLATIONS[name][0], dict(ABLATIONS[name][1])
  else:
    pe, overrides = name, {}
  for item in filter(None, (s.strip() for s in rest.replace('+', ',').split(','))):
    k, eq, v = item.partition('=')
    if not eq:
      raise ValueError(f'variant {spec!r}: override {item!r} is not key=value')
    overrides[k] = _parse_value(v)
  return pe, impl, overrides


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """The tokenizer's vocabulary without loading data (gpt2: 50257, bytes: 256)."""
  tok = config.data.tokenizer
  if tok == 'gpt2':
    return 50257
  if tok == 'bytes':
    return 256
  return int(config.data.vocab_size)


def fit_batch(config: ml_collections.ConfigDict, batch: int, dp: int) -> list[str]:
  """Sets train.batch_size and keeps aux.shift_sets dividing the batch; returns the changes."""
  changes = []
  accum = max(int(config.train.get('grad_accum', 1)), 1)
  if batch % (dp * accum):
    raise ValueError(f'--batch={batch} must be divisible by the data-parallel devices ({dp}) '
                     f'x train.grad_accum ({accum})')
  config.train.batch_size = batch
  micro = batch // accum
  per = dp if bool(config.aux.get('counts_per_device', False)) else 1
  sets = int(config.aux.shift_sets)
  if micro % (per * sets):
    new = math.gcd(sets, micro // per)
    changes.append(f'aux.shift_sets {sets} -> {new} (gcd with the batch {micro}'
                   + (f' / {per} devices' if per > 1 else '') + ')')
    config.aux.shift_sets = new
  return changes


# ---------------------------------------------------------------------------- one variant

@dataclasses.dataclass
class Variant:
  """A built variant: its task, live state and compiled step, plus the measurements."""

  name: str
  config: ml_collections.ConfigDict
  task: Task
  state: Any
  step: Any
  row: dict
  ms_rounds: list[float] = dataclasses.field(default_factory=list)
  shifted: float = 0.0
  timed_steps: int = 0
  eval_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  encode_ms: dict[str, float] = dataclasses.field(default_factory=dict)
  decode_s: list[float] = dataclasses.field(default_factory=list)
  decode_table_s: list[float] = dataclasses.field(default_factory=list)
  decode_table: Any = None
  batch: Any = None
  rng: Any = None


def _memory_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def _gflop(compiled) -> float | None:
  """XLA's FLOP count of the compiled step, in GFLOP (None where the backend has none)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  ca = ca[0] if isinstance(ca, (list, tuple)) and ca else ca
  flops = ca.get('flops') if isinstance(ca, dict) else None
  return float(flops) / 1e9 if flops and flops > 0 else None


def _device_peak() -> int | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def _uses_cudnn(compiled) -> bool:
  try:
    return 'cudnn' in compiled.as_text().lower()
  except Exception:  # pylint: disable=broad-except
    return False


def synthetic_batch(vocab: int, batch: int, length: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  return {'inputs': tokens, 'targets': np.roll(tokens, -1, 1)}


def build(name: str, base: ml_collections.ConfigDict, mesh, warmup: int) -> Variant:
  """Task, sharded state, the compiled train step (timed), and `warmup` untimed steps."""
  pe, impl, overrides = parse_variant(name)
  config = base.copy_and_resolve_references()
  config.pe.type = pe
  if impl:
    config.model.attention_impl = impl
  for k, v in overrides.items():
    set_value(config, k, v)
  dp = sharding.data_parallel_size(mesh)
  vocab = vocab_size(config)
  task = Task(config, vocab_size=vocab, data_parallel=dp)
  tx, lr_fn = optim.build_optimizer(config.optim, int(config.train.steps))
  state, shardings = train.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
  jitted = train.jit_train_step(
      train.make_train_step(task, lr_fn, int(config.train.get('grad_accum', 1))), shardings,
      mesh)
  batch = sharding.global_batch(
      synthetic_batch(vocab, int(config.train.batch_size), task.train_grid[0]), mesh)
  rng = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  lowered = jitted.lower(state, batch, rng)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  state, m = compiled(state, batch, rng)
  jax.block_until_ready(m)
  first_s = time.perf_counter() - t2
  for _ in range(warmup):
    state, m = compiled(state, batch, rng)
  jax.block_until_ready(m)
  row = {'variant': name, 'pe': pe, 'attention_impl': config.model.attention_impl,
         'overrides': {k: v for k, v in overrides.items()},
         'params': count_params(state.params),
         'lower_s': t1 - t0, 'compile_s': t2 - t1, 'first_step_s': first_s,
         'peak_mem_bytes': _memory_bytes(compiled), 'peak_mem_source': 'memory_analysis',
         'step_gflop': _gflop(compiled),
         'device_peak_bytes': _device_peak(), 'hlo_cudnn': _uses_cudnn(compiled),
         'shift_sets': task.aux.shift_sets, 'shift_rate': task.aux.shift_rate,
         'flops_per_token': model_flops_per_token(task, state.params)}
  return Variant(name, config, task, state, compiled, row, batch=batch, rng=rng)


def trace_steps(v: Variant, path: pathlib.Path, steps: int) -> None:
  """A jax.profiler trace of `steps` train steps of one variant (after its timing) and the
  compiled step's HLO text beside it (trace_summary.py maps ops to model paths with it)."""
  path.mkdir(parents=True, exist_ok=True)
  (path / 'train_step.hlo.txt').write_text(v.step.as_text())
  with jax.profiler.trace(str(path)):
    for _ in range(steps):
      v.state, _ = v.step(v.state, v.batch, v.rng)
    jax.block_until_ready(v.state)


def _dir_name(variant: str) -> str:
  """A file-system-safe name of a variant string."""
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in variant)


def _subset(variants: list[Variant], names: Sequence[str]) -> list[Variant]:
  """The variants named in `names` (all if empty)."""
  return [v for v in variants if not names or v.name in names]


def time_round(v: Variant, steps: int) -> None:
  """`steps` train steps of one variant, blocked at the end; appends ms/step."""
  shifted = []
  t0 = time.perf_counter()
  for _ in range(steps):
    v.state, m = v.step(v.state, v.batch, v.rng)
    shifted.append(m['shifted'])
  jax.block_until_ready(v.state)
  v.ms_rounds.append(1000 * (time.perf_counter() - t0) / steps)
  v.shifted += float(sum(float(s) for s in jax.device_get(shifted)))
  v.timed_steps += steps


def _eval_setup(v: Variant, mesh, eval_batch: int, factors: Sequence[int]) -> dict:
  """Per length: the PE encoded once (timed, after a compile call) and the compiled step."""
  task, params = v.task, v.state.params
  encode, lm_step = evaluate._jitted(task, 'encode'), evaluate._jitted(task, 'lm')  # pylint: disable=protected-access
  vocab = vocab_size(v.config)
  out = {}
  for f in factors:
    length = f * task.train_grid[0]
    pos = jax.numpy.arange(length, dtype=jax.numpy.int32)[None, :, None]
    jax.block_until_ready(encode(params, pos, None, 'extend'))  # compile
    t0 = time.perf_counter()
    pe = jax.block_until_ready(encode(params, pos, None, 'extend'))
    v.encode_ms[f'{f}x'] = 1000 * (time.perf_counter() - t0)
    host = synthetic_batch(vocab, eval_batch, length, seed=f)
    host['weights'] = np.ones((eval_batch, length), np.float32)
    batch = sharding.global_batch(host, mesh)
    t0 = time.perf_counter()
    compiled = lm_step.lower(params, batch, pe).compile()
    v.row[f'eval_compile_s_{f}x'] = time.perf_counter() - t0
    v.row[f'eval_hlo_cudnn_{f}x'] = _uses_cudnn(compiled)
    jax.block_until_ready(compiled(params, batch, pe))
    out[f'{f}x'] = (compiled, params, batch, pe)
  return out


def time_eval(v: Variant, setup: dict, steps: int) -> None:
  for key, (compiled, params, batch, pe) in setup.items():
    t0 = time.perf_counter()
    for _ in range(steps):
      res = compiled(params, batch, pe)
    jax.block_until_ready(res)
    v.eval_ms.setdefault(key, []).append(1000 * (time.perf_counter() - t0) / steps)


def decode_available() -> bool:
  return importlib.util.find_spec('seqpe_jax.generate') is not None


def time_decode(v: Variant, generate_mod, prompt, new_tokens: int, first: bool) -> None:
  """One greedy KV-cached `generate` call with the PE table encoded once per variant (as
  evaluation caches it), and, apart, the table's encoding; the first call compiles and is
  not recorded."""
  t0 = time.perf_counter()
  table = generate_mod.position_table(v.task, v.state.params, prompt.shape[-1] + new_tokens)
  jax.block_until_ready(table)
  t_table = time.perf_counter() - t0
  if first:
    v.decode_table = table
  t0 = time.perf_counter()
  out = generate_mod.generate(v.task, v.state.params, prompt, max_new_tokens=new_tokens,
                              pe_table=v.decode_table)
  jax.block_until_ready(out)
  dt = time.perf_counter() - t0
  if first:
    v.row['decode_compile_s'] = dt + t_table
  else:
    v.decode_s.append(dt)
    v.decode_table_s.append(t_table)


# ---------------------------------------------------------------------------- report

def _median(xs: Sequence[float]) -> float | None:
  return float(statistics.median(xs)) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
  if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
    return None
  return a / b


def _reference(rows: list[dict], pe: str) -> dict | None:
  """The row named exactly `pe`, else the first row of that PE type without overrides."""
  for r in rows:
    if r['variant'] == pe:
      return r
  for r in rows:
    if r['pe'] == pe and not r['overrides']:
      return r
  return None


def finish_rows(variants: list[Variant], batch: int, length: int, peak_tflops: float,
                decode_tokens: int, decode_batch: int) -> list[dict]:
  rows = []
  for v in variants:
    r = dict(v.row)
    ms = _median(v.ms_rounds)
    r.update(ms_per_step=ms, ms_min=min(v.ms_rounds), ms_max=max(v.ms_rounds),
             ms_rounds=list(v.ms_rounds), tokens_per_s=batch * length / (ms / 1000),
             shifted_frac=v.shifted / max(v.timed_steps, 1), timed_steps=v.timed_steps)
    r['mfu'] = (r['flops_per_token'] * r['tokens_per_s'] / (peak_tflops * 1e12)
                if peak_tflops else None)
    for k in ('1x', '4x'):
      r[f'eval_ms_{k}'] = _median(v.eval_ms.get(k, []))
      r[f'encode_ms_{k}'] = v.encode_ms.get(k)
    r['decode_tok_s'] = (decode_tokens * decode_batch / _median(v.decode_s)
                         if v.decode_s else None)
    r['decode_table_ms'] = (1000 * _median(v.decode_table_s) if v.decode_table_s else None)
    rows.append(r)
  rope, learned = _reference(rows, 'rope'), _reference(rows, 'learned')
  for r in rows:
    r['ratio_rope'] = _ratio(r['ms_per_step'], rope and rope['ms_per_step'])
    r['ratio_learned'] = _ratio(r['ms_per_step'], learned and learned['ms_per_step'])
    r['gflop_ratio_rope'] = _ratio(r['step_gflop'], rope and rope['step_gflop'])
    for k in ('1x', '4x'):
      r[f'eval_ratio_learned_{k}'] = _ratio(r[f'eval_ms_{k}'], learned and learned[f'eval_ms_{k}'])
    r['decode_ratio_rope'] = _ratio(r['decode_tok_s'], rope and rope['decode_tok_s'])
  return rows


def shares(rows: list[dict]) -> dict:
  """Where SeqPE's step time goes (module doc), from the variants present in the run."""
  t = {r['variant']: r['ms_per_step'] for r in rows}
  out: dict[str, Any] = {}
  s = t.get('seqpe')

  def frac(a: str, b: str, key: str, formula: str) -> None:
    if s and a in t and b in t:
      out[key] = {'share': (t[a] - t[b]) / s, 'ms': t[a] - t[b], 'formula': formula}
  frac('seqpe-noaux', 'nope', 'encoder', '(t[seqpe-noaux] - t[nope]) / t[seqpe]')
  frac('seqpe', 'seqpe-noct', 'contrastive', '(t[seqpe] - t[seqpe-noct]) / t[seqpe]')
  frac('seqpe', 'seqpe-noood', 'ood', '(t[seqpe] - t[seqpe-noood]) / t[seqpe]')
  frac('seqpe', 'seqpe-noshift', 'shift', '(t[seqpe] - t[seqpe-noshift]) / t[seqpe]')
  if 'seqpe-shift1' in t and 'seqpe-shift0' in t:
    out['shift_step_ms'] = t['seqpe-shift1'] - t['seqpe-shift0']
  if 'seqpe-shift0' in t and 'seqpe-noshift' in t:
    out['cond_overhead_ms'] = t['seqpe-shift0'] - t['seqpe-noshift']
  if s:
    rate = next(r['shift_rate'] for r in rows if r['variant'] == 'seqpe')
    if 'seqpe-shift1' in t and 'seqpe-shift0' in t:
      out['expected_seqpe_ms'] = (1 - rate) * t['seqpe-shift0'] + rate * t['seqpe-shift1']
      out['expected_seqpe_formula'] = f'(1 - {rate:g}) t[seqpe-shift0] + {rate:g} t[seqpe-shift1]'
      if 'rope' in t:
        out['expected_ratio_rope'] = out['expected_seqpe_ms'] / t['rope']
    if 'nope' in t:
      out['total_over_nope'] = {'share': (s - t['nope']) / s, 'ms': s - t['nope']}
  return out


def _f(x: float | None, fmt: str = '.2f', suffix: str = '') -> str:
  return '-' if x is None else f'{x:{fmt}}{suffix}'


def markdown(result: dict) -> str:
  m = result['meta']
  lines = [f"Training step, `{m['profile']}` profile ({m['config']}): batch {m['batch']} x "
           f"length {m['length']}, {m['dtype']}, {m['device_kind']} x{m['device_count']} "
           f"({m['platform']}), jax {m['jax_version']}, {m['repeats']} interleaved rounds of "
           f"{m['steps']} steps, {m['date']}.\n",
           '| variant | ms/step (min-max) | tokens/s | x RoPE | x learned | compile s | '
           'peak MB | GFLOP (x RoPE) | shifted | eval 1x ms (x learned) | '
           'eval 4x ms (x learned) | decode tok/s (x RoPE) |'
           + (' MFU |' if m['peak_tflops'] else ''),
           '|---|---|---|---|---|---|---|---|---|---|---|---|'
           + ('---|' if m['peak_tflops'] else '')]
  for r in result['rows']:
    mem = r['peak_mem_bytes']
    lines.append(
        f"| {r['variant']} | {r['ms_per_step']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f}) | "
        f"{r['tokens_per_s']:,.0f} | {_f(r['ratio_rope'])} | {_f(r['ratio_learned'])} | "
        f"{r['lower_s'] + r['compile_s']:.1f} | {_f(mem and mem / 2**20, '.0f')} | "
        f"{_f(r['step_gflop'], '.1f')} ({_f(r['gflop_ratio_rope'], '.3f')}) | "
        f"{100 * r['shifted_frac']:.0f}% | "
        f"{_f(r['eval_ms_1x'], '.1f')} ({_f(r['eval_ratio_learned_1x'])}) | "
        f"{_f(r['eval_ms_4x'], '.1f')} ({_f(r['eval_ratio_learned_4x'])}) | "
        f"{_f(r['decode_tok_s'], ',.0f')} ({_f(r['decode_ratio_rope'])}) |"
        + (f" {_f(r['mfu'] and 100 * r['mfu'], '.1f', '%')} |" if m['peak_tflops'] else ''))
  sh = result['shares']
  if sh:
    lines.append('\nWhere SeqPE\'s step goes (fractions of the `seqpe` step, from ablations '
                 'timed in the same run):\n')
    for key in ('encoder', 'contrastive', 'ood', 'shift', 'total_over_nope'):
      if key in sh:
        lines.append(f"- {key}: {100 * sh[key]['share']:.1f}% ({sh[key]['ms']:+.1f} ms)"
                     + (f" = {sh[key]['formula']}" if 'formula' in sh[key] else
                        ' = (t[seqpe] - t[nope]) / t[seqpe]'))
    if 'shift_step_ms' in sh:
      lines.append(f"- a shifted step costs {sh['shift_step_ms']:+.1f} ms over a default step "
                   '(t[seqpe-shift1] - t[seqpe-shift0])')
    if 'cond_overhead_ms' in sh:
      lines.append(f"- the shift cond + remat on a default step: {sh['cond_overhead_ms']:+.1f} "
                   'ms (t[seqpe-shift0] - t[seqpe-noshift])')
    if 'expected_seqpe_ms' in sh:
      lines.append(f"- expected seqpe step with the real sampler: {sh['expected_seqpe_ms']:.1f} "
                   f"ms = {sh['expected_seqpe_formula']}"
                   + (f" ({sh['expected_ratio_rope']:.2f}x RoPE)" if 'expected_ratio_rope' in sh
                      else ''))
  lines.append('\nPeak MB: the compiled step\'s memory_analysis (arguments + outputs - aliased '
               '+ temporaries). GFLOP: XLA\'s count for the compiled step (a lax.cond counts '
               'its costlier branch: the shifted step). Ratios: time ratios (x RoPE 1.2 = 20% '
               'slower); decode: throughput ratio.')
  for note in m['notes']:
    lines.append(f'Note: {note}')
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------- main

def profile_config(profile: str, *, on_cpu: bool, per_device_counts: bool = False,
                   config_spec: str = '') -> ml_collections.ConfigDict:
  """A profile's config (`config_spec` instead of its own if given): its overrides, fp32 on
  CPU where it asks, and with `per_device_counts` the recipe's 16 pivots / OOD items / shift
  sets per data-parallel device."""
  prof = PROFILES[profile]
  config = load_config(config_spec or prof.config)
  for k, v in prof.overrides:
    set_value(config, k, v)
  if prof.fp32_on_cpu and on_cpu:
    set_value(config, 'model.dtype', 'float32')
  if per_device_counts:
    for k in ('num_pivots', 'ood_items', 'shift_sets'):
      set_value(config, f'aux.{k}', 16)
    set_value(config, 'aux.counts_per_device', True)
  return config


def main(argv: Sequence[str]) -> dict:
  """Parses `argv` (argv[0] is the program), runs the benchmark, writes JSON + markdown."""
  fv = flags.FlagValues()
  define_flags(fv)
  fv(list(argv))
  prof = PROFILES[fv.profile]
  names = list(fv.variants or prof.variants)
  for flag in ('eval_variants', 'decode_variants', 'trace_variants'):
    unknown = [n for n in getattr(fv, flag) if n not in names]
    if unknown:
      raise ValueError(f'--{flag}: {unknown} are not among the variants {names}')
  platform_name = jax.devices()[0].platform
  on_cpu = platform_name == 'cpu'
  config_spec = fv.config or prof.config
  config = profile_config(fv.profile, on_cpu=on_cpu, per_device_counts=fv.per_device_counts,
                          config_spec=config_spec)
  for item in fv.override:
    k, _, v = item.partition('=')
    set_value(config, k, v)
  if fv.length:
    set_value(config, 'train.seq_len', fv.length)
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  if fv.batch:
    batch = fv.batch
  elif not on_cpu and prof.batch_per_device:
    batch = prof.batch_per_device * dp
  else:
    batch = prof.batch_cpu * dp if prof.batch_cpu and dp > 1 else (
        prof.batch_cpu or int(config.train.batch_size))
  adjusted = fit_batch(config, batch, dp)
  for a in adjusted:
    print(f'batch {batch}: {a}', flush=True)
  eval_batch = fv.eval_batch or int(config.eval.batch_size)
  eval_batch = int(math.ceil(eval_batch / dp) * dp)
  steps, repeats = fv.steps or prof.steps, fv.repeats or prof.repeats
  length = int(config.train.seq_len)
  notes = ['the machine may be shared with other jobs; ratios within one run are comparable, '
           'absolute times are noisy'] if on_cpu else []
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({platform_name}), '
        f'profile {fv.profile} ({config_spec}), length {length}, batch {batch}, '
        f'dtype {config.model.dtype}, {repeats} rounds x {steps} steps, variants {names}',
        flush=True)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    variants = []
    for name in names:
      v = build(name, config, mesh, fv.warmup)
      variants.append(v)
      print(f'  built {name:>16}: compile {v.row["lower_s"] + v.row["compile_s"]:.1f}s, '
            f'{v.row["params"]:,} params', flush=True)
    for r in range(repeats):
      for v in variants:
        time_round(v, steps)
      print(f'  round {r + 1}/{repeats}: ' + ', '.join(
          f'{v.name} {v.ms_rounds[-1]:.1f}' for v in variants) + ' ms/step', flush=True)
    if fv.trace_dir:
      for v in _subset(variants, fv.trace_variants):
        trace_steps(v, pathlib.Path(fv.trace_dir) / _dir_name(v.name), fv.trace_steps)

    if fv.eval:
      timed = _subset(variants, fv.eval_variants)
      setups = [_eval_setup(v, mesh, eval_batch, (1, 4)) for v in timed]
      for _ in range(repeats):
        for v, s in zip(timed, setups):
          time_eval(v, s, fv.eval_steps)
      del setups

    has_decode = decode_available()
    if fv.decode and has_decode:
      from seqpe_jax import generate  # pylint: disable=g-import-not-at-top
      prompt = synthetic_batch(vocab_size(config), fv.decode_batch, fv.decode_prompt,
                               seed=7)['inputs']
      timed = _subset(variants, fv.decode_variants)
      for first in (True,) + (False,) * repeats:
        for v in timed:
          time_decode(v, generate, prompt, fv.decode_tokens, first)
    elif fv.decode:
      notes.append('decode tok/s is null: seqpe_jax.generate (KV-cached decoding) is not in '
                   'this checkout')

  rows = finish_rows(variants, batch, length, fv.peak_tflops, fv.decode_tokens, fv.decode_batch)
  result = {
      'meta': {
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'device_kind': jax.devices()[0].device_kind, 'platform': platform_name,
          'device_count': jax.device_count(), 'data_parallel': dp,
          'jax_version': jax.__version__, 'host': platform.node(),
          'host_cpus': os.cpu_count(), 'profile': fv.profile, 'config': config_spec,
          'batch': batch, 'length': length, 'dtype': config.model.dtype,
          'attention_impl': config.model.attention_impl,
          'attn_dropout': float(config.model.attn_dropout),
          'steps': steps, 'repeats': repeats, 'warmup': fv.warmup,
          'eval_batch': eval_batch if fv.eval else None,
          'eval_lengths': [length, 4 * length] if fv.eval else [],
          'decode': ({'batch': fv.decode_batch, 'prompt': fv.decode_prompt,
                      'new_tokens': fv.decode_tokens} if fv.decode and has_decode else None),
          'per_device_counts': fv.per_device_counts, 'adjusted': adjusted,
          'peak_tflops': fv.peak_tflops or None,
          'command': ' '.join([os.path.relpath(argv[0], os.getcwd()) if argv else '',
                               *argv[1:]]).strip(),
          'notes': notes,
      },
      'rows': rows,
      'shares': shares(rows),
  }
  out = pathlib.Path(fv.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2, default=float) + '\n')
  table = markdown(result)
  out.with_suffix('.md').write_text(table)
  print(table, flush=True)
  print(f'wrote {out} and {out.with_suffix(".md")}', flush=True)
  return result


if __name__ == '__main__':
  main(sys.argv)
