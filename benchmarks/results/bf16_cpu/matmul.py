"""A lone [4878, 768] x [768, 3072] matmul (block 0's MLP width at GPT-2 small) in fp32 and
bf16 on this CPU: best of 10 calls each. Output of the 12-07 02:40 run: matmul.txt.
Run from the repository root: python benchmarks/results/bf16_cpu/matmul.py"""
import time
import jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (4878, 768)); w = jax.random.normal(jax.random.key(1), (768, 3072))
for dt in (jnp.float32, jnp.bfloat16):
  f = jax.jit(lambda x, w: jnp.dot(x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32))
  f(x, w).block_until_ready()
  ts = []
  for _ in range(10):
    t = time.perf_counter(); f(x, w).block_until_ready(); ts.append(time.perf_counter() - t)
  print(dt.__name__, min(ts) * 1e3, 'ms', 2 * 4878 * 768 * 3072 / min(ts) / 1e9, 'GFLOP/s')
