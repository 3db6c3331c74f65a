"""The tree attention's core (gather, scores, masked softmax, weighted sum; forward and
backward) in three forms, interleaved: `cur` the committed batched (row, head) 1 x T dots
(the last block's path), `masked` q placed block-diagonally so one (row) dot covers both heads,
`prod` broadcast products and sums. Not adopted (masked 2x, prod 7x slower; output of the
12-07 13:55 run: attn_micro.txt; a 12:00 run gave 6.4 / 12.6 / 47.3 ms). Run from the repository root:

  python benchmarks/results/tree_attn_sum/attn_micro.py U J T H K ROUNDS
  (the CPU config's block 0: 2493 2493 5 2 32 7)"""
import pathlib, sys, time
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from seqpe_jax import prefix_trie as P, layers

def make(u, j, t, h, k, seed=0):
  rng = np.random.default_rng(seed)
  kv = jnp.asarray(rng.normal(size=(1, u, 2, h, k)), jnp.float32)
  q = jnp.asarray(rng.normal(size=(1, j, h, k)), jnp.float32)
  anc = jnp.asarray(rng.integers(0, u, (1, j, t)), jnp.int32)
  valid = np.tril(np.ones((t, t), bool))[rng.integers(0, t, j)]
  w = jnp.asarray(rng.normal(size=(1, j, h, k)), jnp.float32)
  return q, kv, anc, valid, w

def cur(q, kv, anc, valid):
  dh = q.shape[-1]
  k_, v_ = P._gather_kv(kv, anc)
  lg = jnp.einsum('rjhk,rjthk->rjht', q, k_) * dh**-0.5
  lg = jnp.where(jnp.asarray(valid)[None, :, None, :], lg, layers.NEG_INF)
  p = jax.nn.softmax(lg, -1)
  return jnp.einsum('rjht,rjthk->rjhk', p, v_)

def masked(q, kv, anc, valid):
  r, j, h, dh = q.shape
  k_, v_ = P._gather_kv(kv, anc)
  k_ = k_.reshape(r, j, -1, h * dh); v_ = v_.reshape(r, j, -1, h * dh)
  eye = jnp.eye(h, dtype=q.dtype)
  qm = (q[:, :, :, None, :] * eye[:, :, None]).reshape(r, j, h, h * dh)
  lg = jnp.einsum('rjhc,rjtc->rjht', qm, k_) * dh**-0.5
  lg = jnp.where(jnp.asarray(valid)[None, :, None, :], lg, layers.NEG_INF)
  p = jax.nn.softmax(lg, -1)
  full = jnp.einsum('rjht,rjtc->rjhc', p, v_).reshape(r, j, h, h, dh)
  return jnp.einsum('rjhgk,hg->rjhk', full, eye)

def prod(q, kv, anc, valid):
  dh = q.shape[-1]
  k_, v_ = P._gather_kv(kv, anc)
  lg = jnp.sum(q[:, :, None] * k_, -1) * dh**-0.5   # r j t h
  lg = jnp.where(jnp.asarray(valid)[None, :, :, None], lg, layers.NEG_INF)
  p = jax.nn.softmax(lg, 2)
  return jnp.sum(p[..., None] * v_, 2)

def step(fn):
  def loss(q, kv, anc, valid, w):
    return jnp.sum(fn(q, kv, anc, valid) * w)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=3)

u, j, t, h, k = [int(a) for a in sys.argv[1:6]]
rounds = int(sys.argv[6])
q, kv, anc, valid, w = make(u, j, t, h, k)
class V:  # hashable static valid
  def __init__(s, a): s.a = a
  def __hash__(s): return 0
  def __eq__(s, o): return True
  def __array__(s, dtype=None, copy=None): return s.a
vv = V(valid)
fs = {'cur': step(cur), 'masked': step(masked), 'prod': step(prod)}
outs = {n: f(q, kv, anc, vv, w) for n, f in fs.items()}
a = outs['cur']
for n in ('masked', 'prod'):
  b = outs[n]
  print(n, 'max diff value', float(abs(a[0]-b[0])), 'grads', [float(jnp.max(abs(x - y))) for x, y in zip(a[1], b[1])])
ts = {n: [] for n in fs}
for _ in range(rounds):
  for n, f in fs.items():
    t0 = time.perf_counter()
    for _ in range(20): o = f(q, kv, anc, vv, w)
    jax.block_until_ready(o)
    ts[n].append((time.perf_counter() - t0) / 20 * 1000)
for n in ts: print(n, 'median ms', round(float(np.median(ts[n])), 3), [round(x, 2) for x in ts[n]])
