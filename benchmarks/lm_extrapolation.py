r"""Length extrapolation of every 1-D PE: corpora x budgets x seeds, plus SeqPE ablations.

Each run is one `python -m seqpe_jax.main` training + evaluation (its own workdir
under --root); a rerun skips runs whose `extrapolation.json` exists, so an
interrupted sweep resumes. After every finished run the collected records are
written to --output (JSON `{"runs": [...]}`), a markdown table (mean [min-max]
over seeds) next to it and a plot (ppl vs length, log-x, seed bands).

  python benchmarks/lm_extrapolation.py --profile=quick            # 2 CPU cores
  python benchmarks/lm_extrapolation.py --profile=quick --only='seqpe|alibi' --list
  python benchmarks/lm_extrapolation.py --profile=full --jobs=1    # one accelerator

Profiles: `quick` = configs/lm_wikitext2.py (byte level, T = 64, 3 layers x 128)
on WikiText-2 and Gutenberg books (held-out books for valid/test), 400 and 800
steps, seeds 0-2 for seqpe / alibi / rope; seed 0 of the other PEs (both corpora)
and of the ablations (WikiText-2), at 400 steps. `full` = the same grid at
GPT-2-small scale (configs/lm_wikitext103.py shape, T = 512) on WikiText-103 and
Gutenberg.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from benchmarks import sweep  # pylint: disable=g-import-not-at-top
_PROFILE = flags.DEFINE_enum('profile', 'quick', ['quick', 'full'], 'Grid and model size.')
_ROOT = flags.DEFINE_string('root', 'runs/lm_extrapolation', 'Parent of the run workdirs.')
_OUTPUT = flags.DEFINE_string('output', 'benchmarks/results/lm_extrapolation.json',
                              'JSON output; the .md table and .png plot go next to it.')
_JOBS = flags.DEFINE_integer('jobs', 2, 'Runs in parallel (each pinned to one CPU core on CPU).')
_ONLY = flags.DEFINE_string('only', '', 'Regex: keep runs whose id matches (e.g. "seqpe").')
_LIST = flags.DEFINE_bool('list', False, 'Print the runs (done / to do) and exit.')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'Extra `key=value` config overrides for '
                                      'every run (e.g. a shrunk model for a smoke test).')

# Run variants: name -> (pe label, config overrides). 'seqpe' is the shipped default;
# 'seqpe-paper' the paper's method exactly (see README "Results").
PAPER = ('aux.max_position=10000', 'aux.shift_rate=0.1')
MAIN_PES = ('seqpe', 'alibi', 'rope')
OTHER_PES = ('seqpe-paper', 'learned', 'sinusoidal', 'nope', 'fire', 'kerple', 'alibi-official')
# The official code's ALiBi adds the bias before 1/sqrt(d_h) (slopes / 8 at d_h = 64): the
# baseline the paper's ALiBi numbers come from.
BASELINE_VARIANTS = {'alibi-official': ('alibi', ('pe.type=alibi', 'pe.alibi.before_scale=True'))}
ABLATIONS = {
    'seqpe-no-contrastive': ('aux.contrastive_weight=0',),
    'seqpe-no-ood': ('aux.ood_weight=0',),
    'seqpe-no-aux': ('aux.contrastive_weight=0', 'aux.ood_weight=0'),
    'seqpe-no-shift': ('aux.shift_rate=0',),
    'seqpe-max-pos-10000': ('aux.max_position=10000',),
    'seqpe-shift-0.1': ('aux.shift_rate=0.1',),
    'seqpe-attn_add': ('pe.seqpe.apply=attn_add',),
    'seqpe-attn_mul': ('pe.seqpe.apply=attn_mul',),
    'seqpe-input_add': ('pe.seqpe.apply=input_add',),
}


def _variant(name: str) -> tuple[str, tuple[str, ...]]:
  """(pe type, overrides) of a variant name."""
  if name in ABLATIONS:
    return 'seqpe', ('pe.type=seqpe', *ABLATIONS[name])
  if name == 'seqpe-paper':
    return 'seqpe', ('pe.type=seqpe', *PAPER)
  if name in BASELINE_VARIANTS:
    return BASELINE_VARIANTS[name]
  return name, (f'pe.type={name}',)


@dataclasses.dataclass(frozen=True)
class Profile:
  config: str
  corpora: tuple[str, ...]
  budgets: tuple[int, ...]
  seeds: tuple[int, ...]
  overrides: tuple[str, ...] = ()

  def runs(self) -> list['Run']:
    """The main grid first (so a partial sweep has it), then one seed of the other PEs on
    every corpus and the ablations on the first corpus, both at the smallest budget: the
    budget where the paper's settings failed, and what keeps `quick` near 90 minutes."""
    small = min(self.budgets)
    out = [Run(self, name, corpus, steps, s) for corpus in self.corpora
           for steps in self.budgets for name in MAIN_PES for s in self.seeds]
    out += [Run(self, name, corpus, small, self.seeds[0]) for corpus in self.corpora
            for name in OTHER_PES]
    out += [Run(self, name, self.corpora[0], small, self.seeds[0]) for name in ABLATIONS]
    return out


PROFILES = {
    'quick': Profile('configs/lm_wikitext2.py', ('wikitext-2', 'gutenberg'), (400, 800),
                     (0, 1, 2), ("eval.splits=('valid','test')",)),
    'full': Profile('configs/lm_wikitext103.py', ('wikitext-103-raw', 'gutenberg'),
                    (20000, 40000), (0, 1, 2),
                    ("eval.splits=('valid','test')", 'eval.lengths=(512,1024,2048,4096,8192)',
                     'eval.checkpoint=latest', 'train.keep_best=False', 'train.eval_every=0')),
}


@dataclasses.dataclass(frozen=True)
class Run:
  profile: Profile
  name: str
  corpus: str
  steps: int
  seed: int

  @property
  def id(self) -> str:
    return f'{self.corpus}/{self.steps}/{self.name}/seed{self.seed}'

  def workdir(self, root: pathlib.Path) -> pathlib.Path:
    return root / self.id

  def command(self, root: pathlib.Path) -> list[str]:
    _, overrides = _variant(self.name)
    sets = (*self.profile.overrides, f'data.name={self.corpus}', f'train.steps={self.steps}',
            f'seed={self.seed}', *overrides, *_OVERRIDE.value)
    return sweep.main_command(self.profile.config, self.workdir(root), sets)

  def record(self, root: pathlib.Path) -> dict | None:
    path = self.workdir(root) / 'extrapolation.json'
    if not path.is_file():
      return None
    rep = json.loads(path.read_text())
    config = json.loads((self.workdir(root) / 'config.json').read_text())
    pe, overrides = _variant(self.name)
    # What the run trained (a --override may shrink it), not what the grid asked for.
    return {'pe': self.name, 'pe_type': pe, 'corpus': config['data']['name'],
            'steps': config['train']['steps'],
            'seed': self.seed, 'train_length': rep['train_length'], 'overrides': list(overrides),
            'results': [{'length': r['length'], 'split': r['split'], 'ppl': r['ppl']}
                        for r in rep['results']]}


# ---------------------------------------------------------------------------- report


def _cell(values: list[float]) -> str:
  return sweep.cell(values, 2)


def _groups(records: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
  out: dict[tuple, dict[str, list[dict]]] = {}
  for r in records:
    out.setdefault((r['corpus'], r['steps']), {}).setdefault(r['pe'], []).append(r)
  return out


def _worst_ratio(runs: list[dict], split: str, t: int) -> str:
  """The largest ppl(4x) / ppl(1x) over the seeds, as a percent change ('–' without 4x)."""
  ratios = []
  for r in runs:
    ppl = {x['length']: x['ppl'] for x in r['results'] if x['split'] == split}
    if t in ppl and 4 * t in ppl:
      ratios.append(ppl[4 * t] / ppl[t])
  return f'{100 * (max(ratios) - 1):+.1f}%' if ratios else '–'


def markdown(records: list[dict], split: str = 'valid') -> str:
  """One table per (corpus, steps): mean [min–max] over seeds at each length, and the worst
  seed's 4x-vs-1x change."""
  lines = []
  for (corpus, steps), by_pe in sorted(_groups(records).items()):
    first = next(iter(by_pe.values()))[0]
    t = first['train_length']
    lengths = sorted({x['length'] for x in first['results'] if x['split'] == split})
    lines += [f'\n**{corpus}, {steps} steps** — {split} perplexity, trained at {t} '
              '(mean [min–max] over seeds; n = seeds; last column: the worst seed\'s 4× '
              'perplexity relative to its 1×)\n',
              '| PE | n | ' + ' | '.join(f'{n // t}×' for n in lengths) + ' | 4× vs 1× |',
              '|---|---|' + '---|' * (len(lengths) + 1)]
    for pe, runs in sorted(by_pe.items(), key=lambda kv: (kv[0] not in MAIN_PES, kv[0])):
      cells = [_cell([x['ppl'] for r in runs for x in r['results']
                      if x['split'] == split and x['length'] == n]) for n in lengths]
      cells.append(_worst_ratio(runs, split, t))
      lines.append(f'| {pe} | {len(runs)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines).strip() + '\n'


def plot(records: list[dict], path: pathlib.Path, split: str = 'valid') -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  groups = sorted(_groups(records).items())
  if not groups:
    return
  fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
  for ax, ((corpus, steps), by_pe) in zip(axes[0], groups):
    for pe in [p for p in (*MAIN_PES, *OTHER_PES) if p in by_pe]:
      runs = by_pe[pe]
      lengths = sorted({x['length'] for x in runs[0]['results'] if x['split'] == split})
      vals = [[x['ppl'] for r in runs for x in r['results']
               if x['split'] == split and x['length'] == n] for n in lengths]
      mean = [sum(v) / len(v) for v in vals]
      line, = ax.plot(lengths, mean, marker='o', ms=3, label=pe)
      if len(runs) > 1:
        ax.fill_between(lengths, [min(v) for v in vals], [max(v) for v in vals],
                        color=line.get_color(), alpha=0.2)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_title(f'{corpus}, {steps} steps', fontsize=9)
    ax.set_xlabel('evaluation length (tokens)')
    ax.set_ylabel(f'{split} perplexity')
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(records: list[dict], output: pathlib.Path) -> None:
  output.parent.mkdir(parents=True, exist_ok=True)
  records = sorted(records, key=lambda r: (r['corpus'], r['steps'], r['pe'], r['seed']))
  output.write_text(json.dumps({'profile': _PROFILE.value, 'runs': records}, indent=1) + '\n')
  splits = sorted({x['split'] for r in records for x in r['results']}, reverse=True)
  md = ''.join(f'### {s}\n\n{markdown(records, s)}\n' for s in splits)
  output.with_suffix('.md').write_text(md)
  plot(records, output.with_suffix('.png'))


def main(argv) -> None:
  del argv
  sweep.main(PROFILES[_PROFILE.value].runs(), root=_ROOT.value, output=_OUTPUT.value,
             only=_ONLY.value, jobs=_JOBS.value, pinned=_PROFILE.value == 'quick',
             list_only=_LIST.value, write=write)


if __name__ == '__main__':
  app.run(main)
