"""A/B: train step with the whole state donated vs params/step donated and opt_state not."""
import sys, time, jax, numpy as np
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import throughput as tp
from seqpe_jax import train, optim, sharding
from seqpe_jax.tasks import Task

prof = sys.argv[1]; variants = sys.argv[2].split(','); rounds = int(sys.argv[3]); steps = int(sys.argv[4])
base = tp.profile_config(prof, on_cpu=True, per_device_counts=(prof != 'cpu'))
if prof != 'cpu':
  tp.fit_batch(base, 8, 1)
mesh = sharding.make_mesh(base.mesh)
built = {}
for name in variants:
  for mode in ['whole', 'split']:
    v = tp.build(name, base, mesh, warmup=0)
    if mode == 'split':
      fn = train.make_train_step(v.task, lambda s: 0.0, 1)
      def f(rest, opt, batch, rng, fn=fn):
        return fn(rest.replace(opt_state=opt), batch, rng)
      state = v.state
      rest = state.replace(opt_state=None)
      j = jax.jit(f, donate_argnums=(0,))
      c = j.lower(rest, state.opt_state, v.batch, v.rng).compile()
      m = c.memory_analysis()
      mem = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
      def run(state, c=c, v=v):
        new, met = c(state.replace(opt_state=None), state.opt_state, v.batch, v.rng)
        return new
    else:
      c = v.step; mem = v.row['peak_mem_bytes']
      def run(state, c=c, v=v):
        return c(state, v.batch, v.rng)[0]
    st = v.state
    for _ in range(2): st = run(st)
    jax.block_until_ready(st)
    built[(name, mode)] = [run, st, mem, []]
    print(name, mode, 'mem', mem / 1e6, 'MB', flush=True)
for r in range(rounds):
  for k, b in built.items():
    run, st = b[0], b[1]
    t = time.perf_counter()
    for _ in range(steps): st = run(st)
    jax.block_until_ready(st)
    b[3].append((time.perf_counter() - t) / steps * 1e3); b[1] = st
  print('round', r, {f'{k[0]}/{k[1]}': round(b[3][-1], 1) for k, b in built.items()}, flush=True)
for k, b in built.items():
  print(k, 'median', round(float(np.median(b[3])), 1), 'min', round(min(b[3]), 1), 'mem', round(b[2] / 1e6, 1))
for name in variants:
  print(name, 'split/whole per round', [round(s / w, 3) for s, w in zip(built[(name, 'split')][3], built[(name, 'whole')][3])])
