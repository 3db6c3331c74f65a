"""The no-shift step's suspect (README Performance, 2026-12-07): a shared [1, H, L, S]
attention bias broadcast over the batch (as `injection.py` adds a single position set's bias)
against the same bias tiled with `injection.tile_to_batch` (its written-out transpose), over
12 layers of GPT-2 small attention (8 x 512, 12 heads), forward + backward, interleaved.
Since run 4 the reference attention itself broadcasts a batch-1 bias with a written-out
gradient (`layers.broadcast_batch`): 'broadcast' is then the plain `jnp.broadcast_to` (the old
code), 'layers' the bias passed as [1, H, L, S] (the new code).
Run from the repository root: python benchmarks/results/encoder_remat/bias_p1.py
Output of the 12-07 run: bias_p1.txt."""
import functools, pathlib, sys
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
import jax, jax.numpy as jnp
from benchmarks import interleaved
from seqpe_jax import injection, layers
B, L, H, K = 8, 512, 12, 64
kq, kk, kv, kb = jax.random.split(jax.random.PRNGKey(0), 4)
q = jax.random.normal(kq, (B, L, H, K)); k = jax.random.normal(kk, (B, L, H, K))
v = jax.random.normal(kv, (B, L, H, K)); bias1 = jax.random.normal(kb, (1, H, L, L)) * 0.1
mask = layers.causal_mask(L, L)[None, None]
def loss(q, k, v, bias, tile):
  tot = 0.
  for _ in range(12):  # 12 layers share the bias
    b = {'tiled': lambda: injection.tile_to_batch(bias, B), 'layers': lambda: bias,
         'broadcast': lambda: jnp.broadcast_to(bias, (B, *bias.shape[1:]))}[tile]()
    out = layers.dot_product_attention(q, k, v, scale=K**-0.5, bias=b, mask=mask,
                                       implementation='reference', dropout_rate=0.0, dropout_rng=None)
    tot = tot + jnp.sum(out * out)
    q = q + 0.01 * out
  return tot
fns = {t: jax.jit(jax.grad(lambda q, k, v, b, t=t: loss(q, k, v, b, t), argnums=(0, 3))).lower(q, k, v, bias1).compile() for t in ('broadcast', 'tiled', 'layers')}
g = {t: f(q, k, v, bias1) for t, f in fns.items()}
for t in ('tiled', 'layers'):
  print('max grad diff', t, float(jnp.abs(g[t][1] - g['broadcast'][1]).max()),
        float(jnp.abs(g['broadcast'][1]).max()))
times = interleaved.time_interleaved(
    {t: functools.partial(f, q, k, v, bias1) for t, f in fns.items()}, rounds=5)
interleaved.report('bias_p1', times)
