"""Block 0's attention in the table's domain vs gathered keys and values: the training encoder, A/B.

The encoder before this change (`prefix_trie.py` at commit BEFORE, loaded from git; `seqpe.py`
unchanged) and the working tree's, on the same parameters and positions: value and gradient of
a rematerialised loss (forward, recomputed forward, backward), interleaved rounds. Two position
sets, as a default (unshifted) training step encodes them:
  cpu:  configs/lm_wikitext2.py — 64 main + 528 contrastive + 512 OOD positions, 4 digits,
        width 64, 2 heads, bound 2560, no dropout (the config's);
  gpt2: configs/lm_wikitext103.py per device — 512 main + 528 contrastive + 512 OOD, 5
        digits, width 768, 12 heads, bound 20000, dropout 0.1 (the recipe's).
Prints XLA's FLOP count, the largest output and gradient differences and the median / min
ms. Run from the repository root (a git clone):

  python benchmarks/results/table_attention/encoder.py [--rounds=9] [--only=cpu]
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

BEFORE = '954f7f6'


def load_before():
  """`seqpe.py` (working tree) importing BEFORE's `prefix_trie.py` (from git)."""
  mods = {}
  for name in ('prefix_trie', 'seqpe'):
    src = (subprocess.run(['git', 'show', f'{BEFORE}:seqpe_jax/{name}.py'], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
           if name == 'prefix_trie' else (ROOT / 'seqpe_jax/seqpe.py').read_text())
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
  ap.add_argument('--only', default='')
  args = ap.parse_args()
  before = load_before()
  rng = np.random.default_rng(0)
  for name, n_main, digits, width, heads, bound, drop in (
      ('cpu', 64, 4, 64, 2, 2560, 0.0), ('gpt2', 512, 5, 768, 12, 20000, 0.1)):
    if args.only and name != args.only:
      continue
    pos = np.concatenate([np.arange(n_main), rng.integers(0, bound, 528 + 512)])
    pos = jnp.asarray(pos[:, None], jnp.int32)
    kw = dict(max_digits=digits, width=width, num_heads=heads, num_layers=2, out_dim=width,
              dropout_rate=drop, share_prefixes=True, position_bound=bound)
    encs = {'gathered': before.SeqPEEncoder(**kw), 'table': seqpe.SeqPEEncoder(**kw)}
    params = encs['table'].init(jax.random.PRNGKey(0), jnp.zeros((4, 1), jnp.int32))
    w = jax.random.normal(jax.random.PRNGKey(1), (pos.shape[0], width))
    fns, outs = {}, {}
    for k, enc in encs.items():
      apply = lambda p, enc=enc: enc.apply(p, pos, deterministic=False,
                                           rngs={'dropout': jax.random.PRNGKey(2)})
      loss = lambda p, apply=apply: jnp.sum(apply(p) * w)
      fns[k] = jax.jit(jax.value_and_grad(jax.checkpoint(loss))).lower(params).compile()
      outs[k] = fns[k](params)
      print(f'{name} {k}: GFLOP {fns[k].cost_analysis()["flops"] / 1e9:.3f}', flush=True)
    (va, ga), (vb, gb) = outs['gathered'], outs['table']
    gdiff = max(float(jnp.abs(a - b).max() / (jnp.abs(a).max() + 1e-30))
                for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
    print(f'{name}: loss {float(va):.6f} vs {float(vb):.6f}; largest gradient difference '
          f'{gdiff:.1e} of that leaf\'s largest entry', flush=True)
    times = interleaved.time_interleaved(
        {k: functools.partial(f, params) for k, f in fns.items()}, args.rounds, args.calls)
    interleaved.report(name, times, args.calls)


if __name__ == '__main__':
  main()
