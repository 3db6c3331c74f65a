r"""Train and evaluate one config with several position encodings; one combined table.

Each variant is a separate CLI run (its own workdir under --root, so reruns resume
or reuse finished runs); the table is written to <root>/comparison.md.

  python benchmarks/compare_pes.py --root=runs/compare \
      --variants='seqpe;rope;alibi;learned;sinusoidal;nope;seqpe-noaux=pe.type=seqpe,aux.contrastive_weight=0,aux.ood_weight=0'

A variant is `name` (= `--config.pe.type=name`) or `name=key=value,key=value` (config
overrides, dotted keys without the `--config.` prefix).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = flags.DEFINE_string('config', 'configs/lm_wikitext2.py', 'Config file[:arg].')
_ROOT = flags.DEFINE_string('root', 'runs/compare', 'Parent of the per-variant workdirs.')
_VARIANTS = flags.DEFINE_string('variants', 'seqpe;rope;alibi;learned;sinusoidal;nope',
                                "';'-separated variants (see the module docstring).")
_EXTRA = flags.DEFINE_multi_string('override', [], 'Extra --config.* overrides for every run.')


def _parse(variant: str) -> tuple[str, list[str]]:
  name, _, rest = variant.partition('=')
  if not rest:
    return name, [f'--config.pe.type={name}']
  return name, [f'--config.{kv}' for kv in rest.split(',') if kv]


def main(argv) -> None:
  del argv
  root = pathlib.Path(_ROOT.value)
  reports = {}
  for variant in filter(None, _VARIANTS.value.split(';')):
    name, overrides = _parse(variant)
    workdir = root / name
    if not (workdir / 'extrapolation.json').exists():
      cmd = [sys.executable, '-m', 'seqpe_jax.main', f'--config={_CONFIG.value}',
             f'--workdir={workdir}', *overrides, *(f'--config.{o}' for o in _EXTRA.value)]
      print('$', ' '.join(cmd), flush=True)
      subprocess.run(cmd, cwd=REPO, check=True)
    reports[name] = json.loads((workdir / 'extrapolation.json').read_text())
  first = next(iter(reports.values()))
  lm = first['task'] == 'lm'
  key, metric = ('length', 'ppl') if lm else ('image_size', 'top1')
  split = first['results'][0]['split']
  sizes = [r[key] for r in first['results'] if r['split'] == split]
  train = first['train_length' if lm else 'train_image_size']
  lines = [f"{'perplexity' if lm else 'top-1'} on {split}, trained at {train} "
           f"({_CONFIG.value}):\n",
           '| PE | ' + ' | '.join(f'{s} ({s / train:g}x)' for s in sizes) + ' |',
           '|---|' + '---|' * len(sizes)]
  for name, rep in reports.items():
    by_size = {r[key]: r[metric] for r in rep['results'] if r['split'] == split}
    fmt = (lambda v: f'{v:.2f}') if lm else (lambda v: f'{100 * v:.1f}%')
    lines.append(f'| {name} | ' + ' | '.join(fmt(by_size[s]) if s in by_size else '-'
                                            for s in sizes) + ' |')
  table = '\n'.join(lines) + '\n'
  root.mkdir(parents=True, exist_ok=True)
  (root / 'comparison.md').write_text(table)
  print(table)


if __name__ == '__main__':
  app.run(main)
