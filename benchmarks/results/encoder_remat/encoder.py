"""The training encoder's backward under each `aux.encoder_remat` policy, A/B/C.

Value and gradient of a loss on the encoder's output, the encoder wrapped as the step wraps
it (`regularisers.remat_wrapper`): full (forward recomputed), dots (matmul outputs kept), none.
Two position sets, as a default (unshifted) training step encodes them:
  cpu:  configs/lm_wikitext2.py — 64 main + 528 contrastive + 512 OOD positions, 4 digits,
        width 64, 2 heads, bound 2560;
  gpt2: configs/lm_wikitext103.py per device — 512 main + 528 contrastive + 512 OOD, 5
        digits, width 768, 12 heads, bound 20000.
Prints XLA's FLOP count and temp memory, the largest gradient difference to `full`, and the
median / min ms over interleaved rounds. Run from the repository root:

  python benchmarks/results/encoder_remat/encoder.py [--rounds=7]
"""
import argparse
import functools
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import interleaved  # noqa: E402
from seqpe_jax import regularisers, seqpe  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--rounds', type=int, default=7)
  ap.add_argument('--calls', type=int, default=3)
  ap.add_argument('--sizes', default='cpu,gpt2')
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  sizes = {'cpu': (64, 4, 64, 2, 2560), 'gpt2': (512, 5, 768, 12, 20000)}
  for name in args.sizes.split(','):
    n_main, digits, width, heads, bound = sizes[name]
    pos = np.concatenate([np.arange(n_main), rng.integers(0, bound, 528 + 512)])
    pos = jnp.asarray(pos[:, None], jnp.int32)
    enc = seqpe.SeqPEEncoder(max_digits=digits, width=width, num_heads=heads, num_layers=2,
                             out_dim=width, dropout_rate=0.1, share_prefixes=True,
                             position_bound=bound)
    params = enc.init(jax.random.PRNGKey(0), jnp.zeros((4, 1), jnp.int32))
    w = jax.random.normal(jax.random.PRNGKey(1), (pos.shape[0], width))
    apply = lambda p: enc.apply(p, pos, deterministic=False,
                                rngs={'dropout': jax.random.PRNGKey(2)})
    fns, grads = {}, {}
    for policy in ('full', 'dots', 'none'):
      loss = regularisers.remat_wrapper(policy, policy)(lambda p: jnp.sum(apply(p) * w))
      fns[policy] = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
      mem = fns[policy].memory_analysis()
      grads[policy] = fns[policy](params)[1]
      print(f'{name} {policy}: GFLOP {fns[policy].cost_analysis()["flops"] / 1e9:.3f}, '
            f'temp MB {mem.temp_size_in_bytes / 2**20:.1f}', flush=True)
    for policy in ('dots', 'none'):
      diff = max(float(jnp.abs(a - b).max()) for a, b in
                 zip(jax.tree.leaves(grads[policy]), jax.tree.leaves(grads['full'])))
      print(f'{name}: max |grad {policy} - grad full| = {diff:.2e}')
    times = interleaved.time_interleaved(
        {k: functools.partial(f, params) for k, f in fns.items()}, args.rounds, args.calls)
    interleaved.report(name, times, args.calls)


if __name__ == '__main__':
  main()
