"""Whole training steps of variants built in one process, interleaved: the CPU config, or
with `--gpt2` GPT-2 small as `throughput.py --profile=gpt2_512 --batch=8 --per_device_counts`
(fp32, 8 x 512, 16 pivots / OOD items / shift sets).

Each variant is `name[@ENVVAR=VALUE]`: `name` a `benchmarks/throughput.py` variant, and the
environment variable set while it is built and compiled (a temporary toggle of a patched tree,
see this folder's README). Prints each round and the medians with step memory (MB: 10^6 bytes;
`throughput.py`'s tables print MiB) and compile time.

  python benchmarks/results/gelu_vjp/ab.py [--gpt2] STEPS ROUNDS VARIANT[,VARIANT...]
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / 'benchmarks')]

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import throughput as T  # noqa: E402
from seqpe_jax import sharding  # noqa: E402


def main(steps: int, rounds: int, specs: list[str], gpt2: bool = False) -> None:
  profile = 'gpt2_512' if gpt2 else 'cpu'
  config = T.profile_config(profile, on_cpu=True, per_device_counts=gpt2,
                            config_spec=str(ROOT / T.PROFILES[profile].config))
  warmup = 1 if gpt2 else 2
  if gpt2:
    T.fit_batch(config, 8, 1)
  mesh = sharding.make_mesh(config.mesh)
  built = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for spec in specs:
      name, _, env = spec.partition('@')
      key, _, val = env.partition('=')
      if key:
        os.environ[key] = val
      built.append((spec, T.build(name, config, mesh, warmup)))
      if key:
        os.environ.pop(key)
    for r in range(rounds):
      for _, v in built:
        T.time_round(v, steps)
      print(f'round {r}: ' + ', '.join(f'{s} {v.ms_rounds[-1]:.1f}' for s, v in built), flush=True)
  med = {s: float(np.median(v.ms_rounds)) for s, v in built}
  for s, v in built:
    print(f'{s:32s} median {med[s]:7.1f} ms  x first {med[s] / med[specs[0]]:.3f}  '
          f'mem {v.row["peak_mem_bytes"] / 1e6:.0f} MB  compile {v.row["compile_s"]:.1f} s')


if __name__ == '__main__':
  args = [a for a in sys.argv[1:] if a != '--gpt2']
  main(int(args[0]), int(args[1]), args[2].split(','), gpt2='--gpt2' in sys.argv)
