"""LayerNorm forward + backward with the scale/bias gradients as row-axis sums (the code,
layers.layer_norm) against a ones-row matmul, interleaved. Output of the 12-07 03:38 run:
ln_colsum.txt. Not adopted: not faster. Run from the repository root:
python benchmarks/results/ln_colsum/ln_colsum.py"""
import functools, jax, jax.numpy as jnp, sys
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[3]))
from seqpe_jax import layers
from benchmarks import interleaved

def bwd_variant(kind):
  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def ln(x, s, b, eps): return layers._layer_norm_fwd(x, s, b, eps)[0]
  def fwd(x, s, b, eps): return layers._layer_norm_fwd(x, s, b, eps)
  def bwd(eps, res, g):
    xh, r, s = res
    rows = tuple(range(g.ndim - 1))
    gxh = g * s
    gx = r * (gxh - gxh.mean(-1, keepdims=True) - xh * (gxh * xh).mean(-1, keepdims=True))
    if kind == 'sum':
      return gx, (g * xh).sum(rows), g.sum(rows)
    d = g.shape[-1]
    g2, x2 = g.reshape(-1, d), xh.reshape(-1, d)
    ones = jnp.ones((1, g2.shape[0]), g.dtype)
    gs = (ones @ jnp.concatenate([g2 * x2, g2], axis=1))[0]
    return gx, gs[:d], gs[d:]
  ln.defvjp(fwd, bwd)
  return ln

for shape in [(1, 2493, 64), (32, 64, 64), (1, 4878, 768)]:
  x = jax.random.normal(jax.random.key(0), shape); s = jnp.ones(shape[-1]); b = jnp.zeros(shape[-1])
  w = jax.random.normal(jax.random.key(1), shape)
  fns = {}
  for kind in ('sum', 'matmul'):
    ln = bwd_variant(kind)
    f = jax.jit(jax.grad(lambda x, s, b, ln=ln: jnp.sum(ln(x, s, b, 1e-5) * w), argnums=(0, 1, 2)))
    fns[kind] = functools.partial(f, x, s, b)
  ga, gb = fns['sum'](), fns['matmul']()
  print(shape, [float(jnp.abs(u - v).max()) for u, v in zip(ga, gb)])
  t = interleaved.time_interleaved(fns, rounds=7, calls=20)
  interleaved.report(str(shape), t, 20)
