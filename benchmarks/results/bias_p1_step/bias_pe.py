"""Does the step's bias structure (one [1, H, L, S] bias = 0.5 PE_q.PE_k, its gradient
feeding both PE_q and PE_k) make the batch-1 broadcast slow? 12 GPT-2 small attention
layers, forward + backward, three forms of the batch broadcast: `layers.broadcast_batch`
(the code), `injection.tile_to_batch`, and `broadcast_batch` with an optimization barrier on
each layer's block sum (defined here). Output of the 12-07 04:10 run: bias_pe.txt.
Run from the repository root: python benchmarks/results/bias_p1_step/bias_pe.py"""
import functools, sys
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[3]))
import jax, jax.numpy as jnp
from benchmarks import interleaved
from seqpe_jax import injection, layers
B, L, H, K = 8, 512, 12, 64
ks = jax.random.split(jax.random.PRNGKey(0), 6)
q = jax.random.normal(ks[0], (B, L, H, K)); k = jax.random.normal(ks[1], (B, L, H, K))
v = jax.random.normal(ks[2], (B, L, H, K))
pq = jax.random.normal(ks[3], (1, L, H, K)) * 0.1; pk = jax.random.normal(ks[4], (1, L, H, K)) * 0.1
mask = layers.causal_mask(L, L)[None, None]

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def bb_barrier(x, b): return jnp.broadcast_to(x, (b, *x.shape[1:]))
bb_barrier.defvjp(lambda x, b: (bb_barrier(x, b), None),
                  lambda b, _, g: (jax.lax.optimization_barrier(layers.block_sum(g, b)),))

def loss(q, k, v, pq, pk, form):
  bias = 0.5 * jnp.einsum('plhk,pshk->phls', pq, pk)
  tot = 0.
  for _ in range(12):
    b = {'tiled': lambda: injection.tile_to_batch(bias, B), 'layers': lambda: bias,
         'barrier': lambda: bb_barrier(bias, B)}[form]()
    out = layers.dot_product_attention(q, k, v, scale=K**-0.5, bias=b, mask=mask)
    tot = tot + jnp.sum(out * out)
    q = q + 0.01 * out
  return tot
forms = ('layers', 'tiled', 'barrier')
fns = {f: jax.jit(jax.grad(lambda q, k, v, a, b, f=f: loss(q, k, v, a, b, f), argnums=(0, 3, 4))).lower(q, k, v, pq, pk).compile() for f in forms}
g = {f: fn(q, k, v, pq, pk) for f, fn in fns.items()}
for f in forms[1:]:
  print(f, [float(jnp.abs(a - b).max()) for a, b in zip(g[f], g['layers'])])
for f, fn in fns.items():
  print(f, 'temp MB', fn.memory_analysis().temp_size_in_bytes / 2**20)
times = interleaved.time_interleaved({f: functools.partial(fn, q, k, v, pq, pk) for f, fn in fns.items()}, rounds=4)
interleaved.report('bias_pe', times)
