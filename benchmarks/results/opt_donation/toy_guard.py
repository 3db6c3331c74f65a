"""AdamW on 6 [128, 512] leaves, state donated: how many [128, 512] copies XLA's CPU
compilation inserts for each form of the non-finite guard (timings here are noise-level).
  python benchmarks/results/opt_donation/toy_guard.py"""
import re
import time

import jax
import jax.numpy as jnp
import optax

params = {f'w{i}': jnp.ones((128, 512)) for i in range(6)}
tx = optax.adamw(1e-3)


def mk(kind):
  def step(p, s, g):
    u, s2 = tx.update(g, s, p)
    ok = jnp.isfinite(g['w0']).all()
    if kind == 'barrier':  # plain, with an optimization barrier
      u, s2 = jax.lax.optimization_barrier((u, s2))
    if kind == 'guard+barrier':
      u, s2 = jax.lax.optimization_barrier((u, s2))
    p2 = optax.apply_updates(p, u)
    if kind == 'cond':
      return jax.lax.cond(ok, lambda: (p2, s2), lambda: (p, s))
    if kind in ('guard', 'guard+barrier'):  # train.make_train_step's form
      p2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), p2, p)
      s2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), s2, s)
    return p2, s2
  return jax.jit(step, donate_argnums=(0, 1))


g = {k: jnp.full(v.shape, 0.1) for k, v in params.items()}
for kind in ['plain', 'guard', 'barrier', 'guard+barrier', 'cond']:
  f = mk(kind)
  s = tx.init(params)
  n = len(re.findall(r'= f32\[128,512\]\{1,0\} copy\(', f.lower(params, s, g).compile().as_text()))
  p = jax.tree.map(jnp.copy, params)
  for _ in range(3):
    p, s = f(p, s, g)
  jax.block_until_ready(p)
  t = time.perf_counter()
  for _ in range(50):
    p, s = f(p, s, g)
  jax.block_until_ready(p)
  print(f'{kind:14s} copies {n:3d}  {(time.perf_counter() - t) / 50 * 1e3:.3f} ms')
