r"""Training-step throughput of position encodings / attention paths, measured in ONE run.

Synthetic batches (no data loading), the real jitted train step (SeqPE regularisers,
random shifts, optimizer). Reports ms/step, tokens/s, the ratio to the first variant, and
model-FLOPs utilisation when `--peak_tflops` is given (H100 SXM bf16 dense: 989).

  # CPU-sized check:
  python benchmarks/throughput.py --config=configs/lm_wikitext2.py --variants=seqpe,rope,alibi
  # GPT-2 small, length 1024, bf16, fused vs reference attention (GPU):
  python benchmarks/throughput.py --config=configs/lm_wikitext103.py:len=1024 \
      --variants=seqpe:fused,seqpe:reference,rope:fused --batch=8 --peak_tflops=989
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from seqpe_jax import optim, sharding, train  # noqa: E402
from seqpe_jax.tasks import Task, count_params  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/lm_wikitext2.py', 'LM config.')
_VARIANTS = flags.DEFINE_list('variants', ['seqpe', 'rope'],
                              'pe_type[:attention_impl] entries, measured in this order.')
_BATCH = flags.DEFINE_integer('batch', 0, 'Global batch (0: the config).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per variant (after 3 warm-up).')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Peak device TFLOP/s for MFU (0: skip).')


def measure(config, pe_type: str, impl: str, batch: int, steps: int) -> dict:
  config = config.copy_and_resolve_references()
  config.pe.type = pe_type
  config.model.attention_impl = impl
  config.train.batch_size = batch
  vocab = int(config.data.get('vocab_size', 256)) if config.data.tokenizer != 'bytes' else 256
  task = Task(config, vocab_size=vocab)
  tx, lr = optim.build_optimizer(config.optim, 1000)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings = train.create_train_state(task, tx, mesh, jax.random.PRNGKey(0))
  step = train.jit_train_step(train.make_train_step(task, lr), shardings, mesh)
  length = task.train_grid[0]
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  host_batch = {'inputs': tokens, 'targets': np.roll(tokens, -1, 1)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    batch_arr = sharding.global_batch(host_batch, mesh)
    t0 = time.perf_counter()
    state, m = step(state, batch_arr, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(2):
      state, m = step(state, batch_arr, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch_arr, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
  n_params = count_params(state.params)
  c = config.model
  # 6N per token for the dense matmuls + 12 * layers * width * length for attention scores.
  flops_per_token = 6 * n_params + 12 * c.num_layers * c.width * length
  tokens_per_s = batch * length / dt
  out = {'variant': f'{pe_type}:{impl}', 'ms_per_step': 1000 * dt,
         'tokens_per_s': tokens_per_s, 'compile_s': compile_s, 'params': n_params,
         'model_tflops': flops_per_token * tokens_per_s / 1e12}
  return out


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  batch = _BATCH.value or int(config.train.batch_size)
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, '
        f'length {config.train.seq_len}, batch {batch}, dtype {config.model.dtype}')
  rows = []
  for v in _VARIANTS.value:
    pe_type, _, impl = v.partition(':')
    rows.append(measure(config, pe_type, impl or config.model.attention_impl, batch, _STEPS.value))
    r = rows[-1]
    mfu = f', MFU {100 * r["model_tflops"] / _PEAK.value:.1f}%' if _PEAK.value else ''
    print(f'{r["variant"]:>22}: {r["ms_per_step"]:8.1f} ms/step, {r["tokens_per_s"]:10.0f} tok/s, '
          f'x{rows[0]["ms_per_step"] / r["ms_per_step"]:.2f} vs {rows[0]["variant"]}, '
          f'compile {r["compile_s"]:.1f}s, {r["params"]:,} params{mfu}', flush=True)


if __name__ == '__main__':
  app.run(main)
