"""The shifted branch's SeqPE encoder at the CPU config, with and without the OOD students.

16 shifted windows of 64 positions + 528 contrastive positions (+ 512 OOD students, as the
shifted branch encoded them before it skipped them), through the prefix-tree encoder of
configs/lm_wikitext2.py (4 digits, width 64, 2 heads, 2 layers, aux.max_position 2560):
value and gradient of a rematerialised loss (forward, recomputed forward, backward), the
two position sets interleaved over 15 rounds of 5 calls. Prints tree rows, XLA's FLOP count
and the median / min ms. Run from the repository root:

  python benchmarks/results/shift_branch/encoder.py
"""
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from seqpe_jax import prefix_trie, seqpe  # noqa: E402

rng = np.random.default_rng(0)
starts = rng.integers(0, 2560 - 64, 16)
main = (starts[:, None] + np.arange(64)).ravel()
ct, ood = rng.integers(0, 2560, 528), rng.integers(0, 2560, 512)
enc = seqpe.SeqPEEncoder(max_digits=4, width=64, num_heads=2, num_layers=2, out_dim=128,
                         dropout_rate=0.0, share_prefixes=True, position_bound=2560)
params = enc.init(jax.random.PRNGKey(0), jnp.zeros((4, 1), jnp.int32))
fns = {}
for name, pos in (('with OOD (before)', np.concatenate([main, ct, ood])),
                  ('without OOD (now)', np.concatenate([main, ct]))):
  pos = jnp.asarray(pos[:, None], jnp.int32)
  w = jax.random.normal(jax.random.PRNGKey(1), (pos.shape[0], 128))
  loss = lambda p, pos=pos, w=w: jnp.sum(enc.apply(p, pos, deterministic=False) * w)
  f = jax.jit(jax.value_and_grad(jax.checkpoint(loss))).lower(params).compile()
  layout = prefix_trie.Layout(prefix_trie.depth_bounds(pos.shape[0], 1, 4, (2560,)), pos.shape[0])
  fns[name] = f
  print(name, pos.shape[0], 'positions,', layout.num_rows, 'tree rows, GFLOP',
        round(f.cost_analysis()['flops'] / 1e9, 3))
times = {k: [] for k in fns}
for _ in range(15):
  for k, f in fns.items():
    jax.block_until_ready(f(params))
    t0 = time.perf_counter()
    for _ in range(5):
      out = f(params)
    jax.block_until_ready(out)
    times[k].append((time.perf_counter() - t0) / 5 * 1e3)
for k, v in times.items():
  print(f'{k}: median {statistics.median(v):.1f} ms, min {min(v):.1f} (15 interleaved rounds of 5)')
