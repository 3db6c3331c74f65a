"""The tree attention's scores and weighted sum as fused products-and-sums vs batched dots.

The training encoder before this change (`seqpe.py` and `prefix_trie.py` at commit b034c05,
whose tree attention used batched dots, loaded from git) and the working tree's, on the same parameters and positions: value and gradient
of a rematerialised loss (forward, recomputed forward, backward), interleaved rounds.
Two position sets, as a default (unshifted) training step encodes them:
  cpu:  configs/lm_wikitext2.py — 64 main + 528 contrastive + 512 OOD positions, 4 digits,
        width 64, 2 heads, bound 2560;
  gpt2: configs/lm_wikitext103.py per device — 512 main + 528 contrastive + 512 OOD, 5
        digits, width 768, 12 heads, bound 20000.
Prints XLA's FLOP count, the largest output difference and the median / min ms. Run from
the repository root (a git clone):

  python benchmarks/results/tree_attn_sum/encoder.py [--rounds=9]
"""
import argparse
import functools
import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import interleaved  # noqa: E402
from seqpe_jax import seqpe  # noqa: E402

BEFORE = 'b034c05'


def load_before():
  """`seqpe.py` of BEFORE, importing BEFORE's `prefix_trie.py` (both from git)."""
  mods = {}
  for name in ('prefix_trie', 'seqpe'):
    src = subprocess.run(['git', 'show', f'{BEFORE}:seqpe_jax/{name}.py'], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    src = src.replace('from seqpe_jax import layers, prefix_trie, positions as pos_lib',
                      'from seqpe_jax import layers, positions as pos_lib\n'
                      'import seqpe_before_prefix_trie as prefix_trie')
    spec = importlib.util.spec_from_loader(f'seqpe_before_{name}', loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    exec(compile(src, f'{BEFORE}:{name}.py', 'exec'), mod.__dict__)
    mods[name] = mod
  return mods['seqpe']


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--rounds', type=int, default=9)
  ap.add_argument('--calls', type=int, default=3)
  args = ap.parse_args()
  before = load_before()
  rng = np.random.default_rng(0)
  for name, n_main, digits, width, heads, bound in (('cpu', 64, 4, 64, 2, 2560),
                                                    ('gpt2', 512, 5, 768, 12, 20000)):
    pos = np.concatenate([np.arange(n_main), rng.integers(0, bound, 528 + 512)])
    pos = jnp.asarray(pos[:, None], jnp.int32)
    kw = dict(max_digits=digits, width=width, num_heads=heads, num_layers=2, out_dim=width,
              dropout_rate=0.1, share_prefixes=True, position_bound=bound)
    encs = {'before': before.SeqPEEncoder(**kw), 'after': seqpe.SeqPEEncoder(**kw)}
    params = encs['after'].init(jax.random.PRNGKey(0), jnp.zeros((4, 1), jnp.int32))
    w = jax.random.normal(jax.random.PRNGKey(1), (pos.shape[0], width))
    fns, outs = {}, {}
    for k, enc in encs.items():
      apply = lambda p, enc=enc: enc.apply(p, pos, deterministic=False,
                                           rngs={'dropout': jax.random.PRNGKey(2)})
      loss = lambda p, apply=apply: jnp.sum(apply(p) * w)
      fns[k] = jax.jit(jax.value_and_grad(jax.checkpoint(loss))).lower(params).compile()
      outs[k] = jax.jit(apply)(params)
      print(f'{name} {k}: GFLOP {fns[k].cost_analysis()["flops"] / 1e9:.3f}', flush=True)
    print(f'{name}: max |after - before| = {float(jnp.abs(outs["after"] - outs["before"]).max()):.2e}'
          f' (outputs up to {float(jnp.abs(outs["before"]).max()):.2f})')
    vg = {k: f(params) for k, f in fns.items()}
    gdiff = max(float(jnp.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(vg['after'][1]), jax.tree.leaves(vg['before'][1])))
    gmax = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(vg['before'][1]))
    print(f'{name}: max gradient difference {gdiff:.2e} (gradients up to {gmax:.2f})')
    times = interleaved.time_interleaved(
        {k: functools.partial(f, params) for k, f in fns.items()}, args.rounds, args.calls)
    interleaved.report(name, times, args.calls)


if __name__ == '__main__':
  main()
