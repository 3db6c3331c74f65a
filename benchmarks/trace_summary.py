r"""Where a traced train step spends its time: XLA op time grouped by model path.

Reads the traces `throughput.py --trace_dir=DIR` writes (`DIR/<variant>/` holds a
jax.profiler trace of a few train steps and the compiled step's HLO text), maps every
executed op to the `op_name` metadata of its HLO instruction (the Flax module path and the
JAX primitive), strips the transformation wrappers (jvp / transpose / vmap / checkpoint / the
shift `cond` branches), and prints, per variant, the total op time per step and the largest
groups, forward and backward apart, with their op counts (on an accelerator each op is at
least one kernel launch, so the counts matter where the step is short):

  python benchmarks/trace_summary.py DIR [--depth=4] [--top=30] [--output=summary.md]

With `--shares` it prints instead one table of each variant's op time per step by part of
the step (`CATEGORIES`: the backbone, the PE encoder, the shared attention bias, the
samplers, each regulariser, the task loss, the optimizer; the named scopes and module paths
the step's ops carry) and, with `--reference=VARIANT`, each part's difference from that
variant's: where a PE's extra time goes.

Needs `xprof` (`pip install xprof`; not a dependency of the package: only this reader
uses it). Runs on any machine: the trace of an accelerator run is read offline.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
import sys
from typing import Sequence

from absl import flags

FLAGS = flags.FlagValues()
flags.DEFINE_integer('depth', 4, 'Path components kept per group.', flag_values=FLAGS)
flags.DEFINE_integer('top', 30, 'Groups listed per variant.', flag_values=FLAGS)
flags.DEFINE_string('output', '', 'Also write the tables here (markdown).', flag_values=FLAGS)
flags.DEFINE_bool('shares', False, 'One table of op time by part of the step (CATEGORIES).',
                  flag_values=FLAGS)
flags.DEFINE_string('reference', '', '--shares: each part\'s difference from this variant.',
                    flag_values=FLAGS)

_WRAPPERS = re.compile(r'(jvp|transpose|vmap|checkpoint|remat|pjit|jit)\(')
# Parts of a train step, first match of the op's path (wrappers stripped) wins. The names are
# module paths (`encode_positions`, `posenc`: the PE modules) and the `jax.named_scope`s of the
# step (`seqpe_jax.tasks.base.Task.loss_fn`, `regularisers`, `injection`, `train`).
CATEGORIES = (
    ('PE encoder', r'(^|/|\.)(encode_positions|posenc)(/|$)'),
    ('PE attention bias', r'(^|/)pe_bias(/|$)'),
    ('samplers', r'(^|/)samplers(/|$)'),
    ('contrastive loss', r'(^|/)contrastive(/|$)'),
    ('OOD loss', r'(^|/)ood(/|$)'),
    ('task loss', r'(^|/)task_loss(/|$)'),
    ('optimizer and guard', r'(^|/)optimizer(/|$)'),
    ('backbone', r'^(GPT|ViT)(/|\.|$)'),
    ('unattributed (copies, loop carries, parameter layouts, RNG splits)', r''),
)

_SKIP = {'cond', 'branch_0_fun', 'branch_1_fun', 'checkpoint', 'rematted_computation',
         'train_step'}


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its `op_name` metadata."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"', line)
    if m:
      out.setdefault(m.group(1), m.group(2))
  return out


def _path(op_name: str) -> list[str]:
  """The op's model path components, transformation wrappers and cond/remat levels removed."""
  return [p for p in _WRAPPERS.sub('', op_name).replace(')', '').split('/')
          if p and p not in _SKIP]


def group_of(op_name: str, depth: int) -> str:
  """`fwd|bwd <path>`: the op's model path without transformation wrappers."""
  direction = 'bwd' if 'transpose(' in op_name else 'fwd'
  return f'{direction} ' + ('/'.join(_path(op_name)[:depth]) or '?')


def category_of(op_name: str) -> str:
  """The part of the step (`CATEGORIES`) an op belongs to, from its `op_name`."""
  path = '/'.join(_path(op_name))
  return next(name for name, pattern in CATEGORIES if re.search(pattern, path))


def summarize(variant_dir: pathlib.Path, depth: int
              ) -> tuple[float, int, list, dict[str, float]]:
  """(op ms per step, ops per step, [(group, ms per step, ops per step)], {category: ms per
  step}) of one trace."""
  planes = sorted(variant_dir.glob('**/*.xplane.pb'))
  if not planes:
    raise FileNotFoundError(f'no *.xplane.pb under {variant_dir}')
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  hlo = variant_dir / 'train_step.hlo.txt'
  names = op_names(hlo.read_text()) if hlo.exists() else {}
  data, _ = raw_to_tool_data.xspace_to_tool_data([str(planes[-1])], 'trace_viewer', {})
  events = json.loads(data).get('traceEvents', [])
  ms, count, parts = collections.Counter(), collections.Counter(), collections.Counter()
  steps = set()
  for e in events:
    args = e.get('args') or {}
    if e.get('ph') != 'X' or 'hlo_op' not in args or 'train_step' not in args.get(
        'hlo_module', ''):
      continue
    steps.add(args.get('run_id'))
    name = names.get(args['hlo_op'], '?')
    g = group_of(name, depth)
    ms[g] += e['dur'] / 1000.0
    count[g] += 1
    parts[category_of(name)] += e['dur'] / 1000.0
  n = max(len(steps), 1)
  rows = [(g, ms[g] / n, count[g] / n) for g, _ in ms.most_common()]
  return (sum(ms.values()) / n, sum(count.values()) / n, rows,
          {c: parts[c] / n for c, _ in CATEGORIES})


def shares_table(totals: dict[str, dict[str, float]], reference: str = '') -> list[str]:
  """Markdown rows: op ms per step by part (`CATEGORIES`) per variant, and with `reference`
  each part's difference from that variant's."""
  names = list(totals)
  others = [v for v in names if v != reference] if reference else []
  head = ['part'] + [f'{v} ms' for v in names] + [f'{v} - {reference}' for v in others]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for c in [c for c, _ in CATEGORIES] + ['total']:
    val = lambda v: sum(totals[v].values()) if c == 'total' else totals[v][c]
    cells = [f'{val(v):.2f}' for v in names] + [f'{val(v) - val(reference):+.2f}' for v in others]
    lines.append(f'| {c} | ' + ' | '.join(cells) + ' |')
  return lines


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  raise SystemExit(2)


def main(argv: Sequence[str]) -> str:
  """Parses `argv` (argv[0] is the program), prints and returns the markdown tables."""
  rest = FLAGS(list(argv))
  if len(rest) != 2:
    _fail('usage: trace_summary.py DIR (the --trace_dir of throughput.py)')
  root = pathlib.Path(rest[1])
  dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  if not dirs:
    _fail(f'{root} holds no traced variants (the --trace_dir of throughput.py)')
  if FLAGS.reference and FLAGS.reference not in [d.name for d in dirs]:
    _fail(f'--reference={FLAGS.reference!r} is not among the traced variants '
          f'{[d.name for d in dirs]}')
  lines, totals = [], {}
  for d in dirs:
    try:
      total, ops, rows, totals[d.name] = summarize(d, FLAGS.depth)
    except FileNotFoundError as e:
      _fail(f'{e} (a variant folder of throughput.py --trace_dir holds one)')
    except ImportError:
      _fail('reading traces needs xprof: pip install xprof')
    if FLAGS.shares:
      continue
    lines += [f'\n### {d.name}: {total:.2f} ms of XLA ops per step, {ops:.0f} ops per step\n',
              '| group | ms/step | ops/step |', '|---|---|---|']
    lines += [f'| {g} | {t:.2f} | {c:.0f} |' for g, t, c in rows[:FLAGS.top]]
  if FLAGS.shares:
    lines = ['XLA op time per step (ms) by part of the step:', ''] + shares_table(
        totals, FLAGS.reference)
  text = '\n'.join(lines) + '\n'
  print(text)
  if FLAGS.output:
    pathlib.Path(FLAGS.output).write_text(text)
  return text


if __name__ == '__main__':
  main(sys.argv)
