r"""Long-context evaluation of trained LM runs: book bpc/bpb, passkey, BABILong QA, per PE.

  python benchmarks/long_context.py --workdirs=runs/wt2_seqpe,runs/wt2_alibi,runs/wt2_rope \
      --output=benchmarks/results/long_context [--quick] [--official_cache_bias]

Each workdir is restored from its `config.json` and latest checkpoint (`eval.checkpoint`),
then evaluated with `seqpe_jax.longctx_eval`:

* books: bits per char / byte of the held-out Gutenberg 'eval' books (or `--books=tfds:pg19`)
  at train length x `--book_multipliers` (default 1..32x);
* passkey: accuracy at train length x `--multipliers` (1..16x) and `--depths`;
* qa: BABILong-style qa1/qa2 over the Gutenberg 'filler' books, exact match (the official
  substring rule) and BABILong's label match, at the same lengths and depths.

Writes `<output>/{books,passkey,qa_em,qa_label_match}.{json,md,png}` (one row group per
PE) and `<output>/summary.md` (all tables and the command). `--official_cache_bias` adds,
for SeqPE runs, passkey/QA rows decoded with the KV cache as the released code does
(`seqpe_jax.generate`, needs that module), labelled `seqpe (official cache)`.
Exit 0, or 2 with one `error: ...` line.
"""

from __future__ import annotations

import pathlib
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Comma-separated trained LM run directories.')
_OUTPUT = flags.DEFINE_string('output', 'benchmarks/results/long_context', 'Output directory.')
_QUICK = flags.DEFINE_bool('quick', False, 'Few books / samples / depths (CPU minutes).')
_OFFICIAL = flags.DEFINE_bool('official_cache_bias', False,
                              'Also decode SeqPE runs with the official KV-cache flaw.')
_DECODER = flags.DEFINE_enum('decoder', 'padded', ['padded', 'cached'],
                             'Our greedy decoder: padded recompute or seqpe_jax.generate.')
_BOOKS = flags.DEFINE_string('books', 'gutenberg', "Book source: gutenberg | tfds:pg19.")
_BOOK_MULT = flags.DEFINE_list('book_multipliers', ['1', '2', '4', '8', '16', '32'],
                               'Book windows as multiples of the training length.')
_MULT = flags.DEFINE_list('multipliers', ['1', '2', '4', '8', '16'],
                          'Passkey / QA lengths as multiples of the training length.')
_DEPTHS = flags.DEFINE_list('depths', None, "Needle depths in [0, 1] ('scatter': BABILong's "
                            'random spread, QA only); default 0,.25,.5,.75,1 (quick: 0,.5,1).')
_SAMPLES = flags.DEFINE_integer('samples', None, 'Samples per cell (default 10; quick: 2).')
_MAX_BOOKS = flags.DEFINE_integer('max_books', None, 'Books scored (default all; quick: 2).')
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', None, 'Tokens scored per book (default all; '
                                   'quick: 2x the largest window).')
_TASKS = flags.DEFINE_list('qa_tasks', ['qa1', 'qa2'], 'bAbI tasks.')
_SEED = flags.DEFINE_integer('seed', 0, 'Record seed (filler start, passkeys, fact spots).')
_EVALS = flags.DEFINE_multi_enum('evals', ['books', 'passkey', 'qa'], ['books', 'passkey', 'qa'],
                                 'Evaluations to run (repeat the flag for several).')


def _depths(quick: bool) -> tuple:
  if _DEPTHS.value is None:
    return (0.0, 0.5, 1.0) if quick else (0.0, 0.25, 0.5, 0.75, 1.0)
  return tuple(None if d == 'scatter' else float(d) for d in _DEPTHS.value)


def _evaluate_run(workdir: str, quick: bool, filler_cache: dict) -> dict[str, list[dict]]:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from configs import from_workdir  # pylint: disable=g-import-not-at-top
  from seqpe_jax import longctx_eval, main, sharding, train  # pylint: disable=g-import-not-at-top
  from seqpe_jax.data import common, longctx  # pylint: disable=g-import-not-at-top
  from seqpe_jax.errors import ConfigError, UserError  # pylint: disable=g-import-not-at-top

  try:
    config = from_workdir.get_config(workdir)
  except ValueError as e:
    raise UserError(str(e)) from e
  if config.task != 'lm':
    raise ConfigError(f'{workdir} is a {config.task} run; long-context evaluation needs an LM')
  run = main.build_run(config, workdir, mode='eval')
  params, step = train.restore_params(run, config.eval.get('checkpoint', 'latest'))
  tok, task = run.data.tokenizer, run.task
  train_len = task.train_grid[0]
  pe = task.pe.type
  data_dir = config.data.get('dir', '')
  cache_dir = common.resolve_cache_dir(config.data.get('cache_dir', ''))
  mult = [int(m) for m in _MULT.value]
  book_lengths = [train_len * int(m) for m in _BOOK_MULT.value]
  lengths = [train_len * m for m in mult]
  depths = _depths(quick)
  samples = _SAMPLES.value or (2 if quick else 10)
  max_books = _MAX_BOOKS.value or (2 if quick else None)
  max_tokens = _MAX_TOKENS.value or (2 * max(book_lengths) if quick else None)
  tag = {'pe': pe, 'workdir': str(workdir), 'step': int(step)}
  out: dict[str, list[dict]] = {}
  print(f'[{pe}] {workdir} step {step}: train length {train_len}', flush=True)
  evals = set(_EVALS.value)
  out['books'], out['passkey'], out['qa'] = [], [], []
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
    if 'books' in evals:
      t0 = time.time()
      books = longctx_eval.read_books(_BOOKS.value, data_dir=data_dir, cache_dir=cache_dir,
                                      max_books=max_books,
                                      tfds_data_dir=config.data.get('tfds_data_dir') or None)
      out['books'] = [{**tag, **r} for r in longctx_eval.book_bits(
          task, params, tok, books, lengths=book_lengths, max_tokens=max_tokens, mesh=run.mesh)]
      print(f'[{pe}] books {time.time() - t0:.0f}s', flush=True)
    if 'qa' in evals and 'filler' not in filler_cache:
      filler_cache['filler'] = longctx.gutenberg_filler(data_dir=data_dir, cache_dir=cache_dir)
    decoders = [(pe, longctx_eval.make_greedy(task, params, decoder=_DECODER.value))]
    if _OFFICIAL.value and pe == 'seqpe':
      decoders.append((f'{pe} (official cache)', longctx_eval.make_greedy(
          task, params, decoder='cached', official_cache_bias=True)))
    for name, greedy in decoders if evals & {'passkey', 'qa'} else ():
      t0 = time.time()
      if 'passkey' in evals:
        out['passkey'] += [{**tag, 'pe': name, **r} for r in longctx_eval.passkey_eval(
            greedy, tok, lengths=lengths, depths=[d for d in depths if d is not None],
            num_samples=samples, seed=_SEED.value)]
      if 'qa' in evals:
        out['qa'] += [{**tag, 'pe': name, **r} for r in longctx_eval.babilong_eval(
            greedy, tok, filler_cache['filler'], tasks=_TASKS.value, lengths=lengths,
            depths=depths, num_samples=samples, seed=_SEED.value, data_dir=data_dir)]
      print(f'[{name}] {"+".join(sorted(evals - {"books"}))} {time.time() - t0:.0f}s',
            flush=True)
  out['train_length'] = train_len  # type: ignore[assignment]
  return out


def main(argv) -> None:
  from seqpe_jax import longctx_eval  # pylint: disable=g-import-not-at-top
  from seqpe_jax.errors import ConfigError, UserError  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  try:
    if not _WORKDIRS.value:
      raise ConfigError('give --workdirs=dir1,dir2,...')
    quick = _QUICK.value
    rows: dict[str, list[dict]] = {'books': [], 'passkey': [], 'qa': []}
    trains, filler_cache = set(), {}
    for workdir in _WORKDIRS.value:
      res = _evaluate_run(workdir, quick, filler_cache)
      trains.add(res.pop('train_length'))
      for k, v in res.items():
        rows[k] += v
    train_len = trains.pop() if len(trains) == 1 else None
    output = pathlib.Path(_OUTPUT.value)
    command = 'python benchmarks/long_context.py ' + ' '.join(sys.argv[1:])
    meta = {'command': command, 'quick': quick, 'books': _BOOKS.value}
    specs = [('books', 'bpc', rows['books'], 'Book bits per character (held-out books)'),
             ('passkey', 'accuracy', rows['passkey'], 'Passkey retrieval accuracy (%)'),
             ('qa_em', 'em', rows['qa'], 'BABILong-style QA exact match (%, official rule)'),
             ('qa_label_match', 'label_match', rows['qa'],
              'BABILong-style QA label match (%, BABILong rule)')]
    parts = [f'# Long-context evaluation\n\n`{command}`\n']
    for name, metric, r, title in specs:
      if not r:  # not among --evals
        continue
      longctx_eval.write_report(output / name, r, metric=metric, train_length=train_len,
                                title=title, meta=meta,
                                vrange=None if metric == 'bpc' else (0.0, 100.0))
      parts.append((output / f'{name}.md').read_text())
      if name == 'books':
        parts.append(longctx_eval.markdown_tables(rows['books'], metric='bpb',
                                                  train_length=train_len,
                                                  title='Book bits per byte'))
    (output / 'summary.md').write_text('\n'.join(parts))
    print('\n'.join(parts))
  except UserError as e:
    print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
