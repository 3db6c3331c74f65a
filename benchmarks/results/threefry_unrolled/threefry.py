"""JAX's threefry on CPU: its rolled lowering (a 5-iteration while loop per call, JAX's CPU
default) against the unrolled one every other backend uses (bit-identical numbers), for the
CPU config's train step, variants built in one process and timed interleaved. Not adopted:
no change (output of the 12-07 11:49 run: output.txt). Run from the repository root:

  python benchmarks/results/threefry_unrolled/threefry.py 10 6 rope@r,seqpe@r,seqpe@u,rope@u

(`@r` rolled, `@u` unrolled; `seqpe` is the config's real sampler, shift rate 0.3.)"""
import pathlib, sys, time, re
REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / 'benchmarks'))
from functools import partial
import jax
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as tf
import flax.linen as nn
import numpy as np
import throughput as T
from seqpe_jax import sharding

MODE = {'unrolled': False}
rolled = tf._threefry2x32_cpu_lowering_rule
unrolled = mlir.lower_fun(partial(tf._threefry2x32_lowering, use_rolled_loops=False), multiple_results=True)
def rule(ctx, *a):
  return (unrolled if MODE['unrolled'] else rolled)(ctx, *a)
mlir.register_lowering(tf.threefry2x32_p, rule, platform='cpu')

steps, repeats = int(sys.argv[1]), int(sys.argv[2])
names = sys.argv[3].split(',')
config = T.load_config('configs/lm_wikitext2.py')
mesh = sharding.make_mesh(config.mesh)
vs = []
with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
  for spec in names:
    name, _, mode = spec.partition('@')
    MODE['unrolled'] = mode == 'u'
    v = T.build(name, config, mesh, 2)
    txt = v.step.as_text()
    print(spec, 'while:', len(re.findall(r'\bwhile\(', txt)), 'compile', round(v.row['compile_s'], 1), 'mem', v.row['peak_mem_bytes'], flush=True)
    vs.append((spec, v))
  for r in range(repeats):
    for _, v in vs:
      T.time_round(v, steps)
    print(f'round {r}: ' + ', '.join(f'{s} {v.ms_rounds[-1]:.1f}' for s, v in vs), flush=True)
  med = {s: float(np.median(v.ms_rounds)) for s, v in vs}
  print('median', med)
  base = med[names[0]]
  print('ratios to', names[0], {s: round(m / base, 3) for s, m in med.items()})
  # per-round ratios
  for s, v in vs:
    print(s, [round(a / b, 3) for a, b in zip(v.ms_rounds, vs[0][1].ms_rounds)])
