"""Long-context evaluation of a trained LM: book bits-per-character, passkey, BABILong QA.

Pure evaluation code (no training, no QA fine-tuning); each evaluation returns a
list of plain rows and `write_report` turns any such list into
`<name>.{json,md,png}`.

* `book_bits`: PG-19-style bits per character / byte of held-out books at each
  context window (non-overlapping `qa_metrics.book_windows`, the PE encoded ONCE
  per window length, the last short window padded with zero weights so every
  token after a book's first is scored exactly once, at every length).
  Rows `{length, bpc, bpb, nll, tokens, chars, bytes, books}`.
* `passkey_eval`: greedy continuation of `longctx.passkey_dataset` records,
  scored with `qa_metrics.passkey_accuracy`. Rows `{length, depth, accuracy, n, chance}`.
* `babilong_eval`: bAbI facts hidden in filler books, greedy answers scored as the
  official SeqPE QA code (`exact_match`: any reference is a substring) and with
  BABILong's label rule (`babilong_compare`). Rows
  `{task, length, depth, em, label_match, n, chance}`.

Accuracies and chance levels are percentages. Records whose prompt and facts do
not fit into a requested length (e.g. a byte-level LM trained at 64 tokens, at 1x)
are skipped and counted in the row's `skipped`; a cell with none left has `n=0`
and metric None.

Generation goes through a `Greedy` callable `greedy(prompts, max_new_tokens,
total_len) -> new ids per prompt`. `PaddedGreedy` (default) recomputes the whole
right-padded sequence each step (causal attention: padding after the cursor never
matters) with one PE encoded per total length and one compiled shape per length;
`CachedGreedy` wraps `seqpe_jax.generate.generate` (KV cache, optionally the
official cache flaw), where that module exists.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqpe_jax import evaluate, qa_metrics, sharding
from seqpe_jax.data import common
from seqpe_jax.data import longctx
from seqpe_jax.errors import ConfigError, DataError
from seqpe_jax.tasks import Task

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _check_lengths(lengths: Sequence[int], what: str) -> list[int]:
  out = [int(l) for l in lengths]
  if not out or any(l < 1 for l in out):
    raise ConfigError(f'{what} lengths must be a non-empty list of positive ints, got '
                      f'{tuple(lengths)}')
  return out


def _check_capacity(task: Task, total: int) -> None:
  """One-line ConfigError if positions 0..total-1 exceed what the PE can serve."""
  evaluate.check_eval_config(
      task, ml_collections.ConfigDict({'eval': {'lengths': (int(total),), 'start_position': 0}}))


# ----------------------------------------------------------------------------
# Books.
# ----------------------------------------------------------------------------


def read_books(data_name: str = 'gutenberg', *, split: str = 'eval', data_dir: str = '',
               cache_dir: common.PathLike | None = None, max_books: int | None = None,
               tfds_data_dir: str | None = None) -> dict[str, str]:
  """{name: text} of the evaluation books: held-out Gutenberg (`split` eval) or TFDS pg19.

  `data_name='tfds:pg19'` reads the prepared TFDS dataset (`split` 'eval' means
  'test'); an unprepared one is a one-line DataError.
  """
  if max_books is not None and max_books < 1:
    raise ConfigError(f'max_books must be positive, got {max_books}')
  if data_name.startswith('tfds:'):
    name = data_name[len('tfds:'):]
    source = common.tfds_source(name, 'test' if split == 'eval' else split, tfds_data_dir)
    n = len(source) if max_books is None else min(max_books, len(source))
    out = {}
    for i in range(n):
      rec = source[i]
      text = rec.get('book_text', rec.get('text'))
      if text is None:
        raise DataError(f'TFDS {name!r} records have no book_text/text feature')
      title = rec.get('book_title', rec.get('book_id', str(i)))
      title = title.decode('utf-8') if isinstance(title, bytes) else str(title)
      out[f'{i:05d}-{title}'] = text.decode('utf-8') if isinstance(text, bytes) else str(text)
    if not out:
      raise DataError(f'TFDS {name!r} split {split!r} has no books')
    return out
  if data_name != 'gutenberg':
    raise ConfigError(f"book data must be 'gutenberg' or 'tfds:<name>', got {data_name!r}")
  books = longctx.read_gutenberg(split, data_dir=data_dir, cache_dir=cache_dir)
  names = sorted(books)[:max_books]
  return {n: books[n] for n in names}


def _padded_windows(windows: Sequence[np.ndarray], length: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """inputs_NxL, targets_NxL, weights_NxL of `book_windows` windows (short ones zero-padded)."""
  n = len(windows)
  inputs, targets = np.zeros((n, length), np.int32), np.zeros((n, length), np.int32)
  weights = np.zeros((n, length), np.float32)
  for i, w in enumerate(windows):
    k = len(w) - 1
    inputs[i, :k], targets[i, :k], weights[i, :k] = w[:-1], w[1:], 1.0
  return inputs, targets, weights


def _batches(arrays: dict[str, np.ndarray], batch_size: int):
  """Fixed-size batches (the last one padded with zero-weight rows)."""
  n = len(next(iter(arrays.values())))
  for i in range(0, n, batch_size):
    chunk = {k: v[i:i + batch_size] for k, v in arrays.items()}
    short = batch_size - len(chunk['inputs'])
    if short:
      chunk = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)])
               for k, v in chunk.items()}
    yield chunk


def _batch_size_for(length: int, tokens_per_batch: int, mesh) -> int:
  bs = max(1, tokens_per_batch // length)
  return evaluate.eval_batch_size(bs, mesh) if mesh is not None else bs


def book_bits(task: Task, params: Any, tokenizer: Any, books: dict[str, str], *,
              lengths: Sequence[int], max_tokens: int | None = None,
              max_books: int | None = None, tokens_per_batch: int = 8192,
              mesh=None) -> list[dict]:
  """Bits per char / byte of `books` at each context window in `lengths` (module doc).

  Each book is cut to its first `max_tokens + 1` tokens (so the same targets are
  scored at every length); `max_books` keeps the first books (sorted names).
  """
  lengths = _check_lengths(lengths, 'book')
  if max_tokens is not None and max_tokens < 1:
    raise ConfigError(f'max_tokens must be positive, got {max_tokens}')
  if max_books is not None and max_books < 1:
    raise ConfigError(f'max_books must be positive, got {max_books}')
  if not books:
    raise DataError('no books to evaluate')
  _check_capacity(task, max(lengths))
  names = sorted(books)[:max_books]
  streams, chars, nbytes = [], 0, 0
  for name in names:
    toks = np.asarray(tokenizer.encode(books[name]), np.int32)
    if max_tokens is not None:
      toks = toks[:max_tokens + 1]
    if len(toks) < 2:
      continue
    c, b = qa_metrics.scored_units(tokenizer, toks, len(toks) - 1)
    streams.append(toks)
    chars, nbytes = chars + c, nbytes + b
  if not streams:
    raise DataError('every book is shorter than two tokens')
  encode, step = evaluate._jitted(task, 'encode'), evaluate._jitted(task, 'lm')  # pylint: disable=protected-access
  rows = []
  for length in lengths:
    t0 = time.time()
    pe = encode(params, jnp.arange(length, dtype=jnp.int32)[None, :, None], None, 'extend')
    windows = [w for s in streams for w in qa_metrics.book_windows(s, length)]
    inputs, targets, weights = _padded_windows(windows, length)
    nll, count = jnp.zeros(()), jnp.zeros(())
    bs = _batch_size_for(length, tokens_per_batch, mesh)
    for batch in _batches({'inputs': inputs, 'targets': targets, 'weights': weights}, bs):
      batch = sharding.global_batch(batch, mesh) if mesh is not None else batch
      s, n = step(params, batch, pe)
      nll, count = nll + s, count + n
    nll, count = float(nll), int(count)
    rows.append({'length': length, 'bpc': qa_metrics.bits_per_char(nll, chars),
                 'bpb': qa_metrics.bits_per_byte(nll, nbytes), 'nll': nll / count,
                 'tokens': count, 'chars': chars, 'bytes': nbytes, 'books': len(streams),
                 'seconds': round(time.time() - t0, 2)})
  return rows


# ----------------------------------------------------------------------------
# Greedy generation.
# ----------------------------------------------------------------------------


class Greedy(Protocol):
  """`greedy(prompts, max_new_tokens, total_len) -> [new ids (max_new_tokens,)] per prompt`.

  `total_len` (>= every prompt + max_new_tokens) lets a backend share one PE and
  one compiled shape across prompts of slightly different lengths.
  """

  def __call__(self, prompts: Sequence[np.ndarray], max_new_tokens: int,
               total_len: int | None = None) -> list[np.ndarray]: ...


@functools.lru_cache(maxsize=None)
def _next_token_fn(task: Task) -> Callable:
  def next_token(params, tokens_BxT, pe, cursor_B):
    logits_BxTxV = task.logits(params, {'inputs': tokens_BxT}, pe)
    last_BxV = logits_BxTxV[jnp.arange(tokens_BxT.shape[0]), cursor_B - 1]
    return last_BxV.argmax(-1).astype(jnp.int32)
  return jax.jit(next_token)


class PaddedGreedy:
  """Uncached greedy decoding over a right-padded buffer of `total_len` tokens.

  The PE of `0..total_len-1` is encoded once per total length (cached here);
  every step runs the full buffer and reads the logits at each row's cursor.
  """

  def __init__(self, task: Task, params: Any, *, tokens_per_batch: int = 8192):
    if not task.generates:
      raise ConfigError(f'generation needs an LM task, got {task.kind!r}')
    self.task, self.params, self.tokens_per_batch = task, params, int(tokens_per_batch)
    self._pe: dict[int, Any] = {}

  def _pe_for(self, total: int) -> Any:
    if total not in self._pe:
      _check_capacity(self.task, total)
      encode = evaluate._jitted(self.task, 'encode')  # pylint: disable=protected-access
      self._pe[total] = encode(self.params, jnp.arange(total, dtype=jnp.int32)[None, :, None],
                               None, 'extend')
    return self._pe[total]

  def __call__(self, prompts: Sequence[np.ndarray], max_new_tokens: int,
               total_len: int | None = None) -> list[np.ndarray]:
    if max_new_tokens < 1:
      raise ConfigError(f'max_new_tokens must be positive, got {max_new_tokens}')
    lens = np.array([len(p) for p in prompts], np.int32)
    if not len(lens) or lens.min() < 1:
      raise ConfigError('every prompt needs at least one token')
    need = int(lens.max()) + max_new_tokens
    total = int(total_len) if total_len else need
    if total < need:
      raise ConfigError(f'total_len={total} < longest prompt + max_new_tokens = {need}')
    pe = self._pe_for(total)
    fn = _next_token_fn(self.task)
    bs = max(1, self.tokens_per_batch // total)
    out = []
    for i in range(0, len(prompts), bs):
      chunk = list(prompts[i:i + bs])
      rows = len(chunk)
      chunk += [chunk[0]] * (bs - rows) if len(prompts) > bs else []  # one shape per length
      buf_BxT = np.zeros((len(chunk), total), np.int32)
      cursor_B = np.array([len(p) for p in chunk], np.int32)
      for b, p in enumerate(chunk):
        buf_BxT[b, :len(p)] = p
      new_BxN = np.zeros((len(chunk), max_new_tokens), np.int32)
      for t in range(max_new_tokens):
        nxt_B = np.asarray(fn(self.params, jnp.asarray(buf_BxT), pe, jnp.asarray(cursor_B)))
        new_BxN[:, t] = nxt_B
        buf_BxT[np.arange(len(chunk)), cursor_B] = nxt_B
        cursor_B = cursor_B + 1
      out += list(new_BxN[:rows])
    return out


class CachedGreedy:
  """`seqpe_jax.generate.generate` (KV cache) per prompt; `official_cache_bias` passes through."""

  def __init__(self, task: Task, params: Any, *, official_cache_bias: bool = False):
    try:
      from seqpe_jax import generate  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ConfigError('KV-cache generation (seqpe_jax.generate) is not available in this '
                        'checkout; use the padded decoder') from e
    self._generate, self._table = generate.generate, generate.position_table
    self.task, self.params, self.official = task, params, bool(official_cache_bias)
    self._tables = {}  # prompt + new tokens -> the PE table, encoded once per length

  def __call__(self, prompts: Sequence[np.ndarray], max_new_tokens: int,
               total_len: int | None = None) -> list[np.ndarray]:
    del total_len
    out = []
    for p in prompts:
      total = len(p) + max_new_tokens
      if total not in self._tables:
        self._tables[total] = self._table(self.task, self.params, total)
      out.append(np.asarray(self._generate(self.task, self.params, np.asarray(p, np.int32),
                                           max_new_tokens=max_new_tokens,
                                           official_cache_bias=self.official,
                                           pe_table=self._tables[total])))
    return out


def make_greedy(task: Task, params: Any, *, decoder: str = 'padded',
                official_cache_bias: bool = False, tokens_per_batch: int = 8192) -> Greedy:
  """The greedy decoder `decoder` ('padded' | 'cached'); the official flaw needs 'cached'."""
  if decoder == 'padded':
    if official_cache_bias:
      raise ConfigError('official_cache_bias changes KV-cached decoding only; use '
                        "decoder='cached'")
    return PaddedGreedy(task, params, tokens_per_batch=tokens_per_batch)
  if decoder == 'cached':
    return CachedGreedy(task, params, official_cache_bias=official_cache_bias)
  raise ConfigError(f"decoder must be 'padded' or 'cached', got {decoder!r}")


def _generate_texts(greedy: Greedy, tokenizer: Any, records: Sequence[dict],
                    max_new_tokens: int) -> list[str]:
  """Greedy continuations of the records' inputs, one decoder call per target length."""
  preds: list[str | None] = [None] * len(records)
  by_length: dict[int, list[int]] = {}
  for i, r in enumerate(records):
    by_length.setdefault(int(r.get('target_length', r['length'])), []).append(i)
  for length, idx in by_length.items():
    prompts = [np.asarray(tokenizer.encode(records[i]['input']), np.int32) for i in idx]
    total = max(length, max(len(p) for p in prompts)) + max_new_tokens
    for i, new in zip(idx, greedy(prompts, max_new_tokens, total)):
      preds[i] = tokenizer.decode(np.asarray(new))
  return preds  # type: ignore[return-value]


def _fit(make: Callable[[], dict]) -> dict | None:
  """A record, or None when its prompt and facts do not fit into the requested length."""
  try:
    return make()
  except ConfigError as e:
    if 'shorter than the prompt' in str(e) or 'cannot fit the prompt' in str(e):
      return None
    raise


def _check_depths(depths: Sequence[float | None], allow_none: bool) -> list:
  depths = list(depths)
  if not depths:
    raise ConfigError('depths must be non-empty')
  for d in depths:
    if d is None and not allow_none:
      raise ConfigError('passkey depths must be numbers in [0, 1]')
    if d is not None and not 0.0 <= float(d) <= 1.0:
      raise ConfigError(f'depths must be in [0, 1], got {d}')
  return depths


def _add(cell: dict, records: list[dict], make) -> None:
  """Appends `make()`'s record to `records` and its index to the cell, or counts a skip."""
  r = _fit(make)
  if r is None:
    cell['skipped'] += 1
  else:
    cell['records'].append(len(records))
    records.append(r)


def _check_samples(num_samples: int) -> None:
  if int(num_samples) < 1:
    raise ConfigError(f'num_samples must be positive, got {num_samples}')


# ----------------------------------------------------------------------------
# Passkey.
# ----------------------------------------------------------------------------


def passkey_eval(greedy: Greedy, tokenizer: Any, *, lengths: Sequence[int],
                 depths: Sequence[float] = DEFAULT_DEPTHS, num_samples: int = 5, seed: int = 0,
                 digits: int = 5, max_new_tokens: int = 8, **record_kwargs) -> list[dict]:
  """Passkey accuracy per (length, depth): greedy continuation, first integer == key."""
  lengths = _check_lengths(lengths, 'passkey')
  depths = _check_depths(depths, allow_none=False)
  _check_samples(num_samples)
  cells, records = {}, []
  for length in lengths:
    for d in depths:
      cell = cells.setdefault((length, d), {'records': [], 'skipped': 0})
      for i in range(int(num_samples)):
        _add(cell, records, lambda: longctx.passkey_record(
            tokenizer, length, depth=d, seed=seed, index=i, digits=digits, **record_kwargs))
  preds = _generate_texts(greedy, tokenizer, records, max_new_tokens) if records else []
  rows = []
  for (length, d), cell in cells.items():
    idx = cell['records']
    acc = (qa_metrics.passkey_accuracy([preds[i] for i in idx],
                                       [records[i]['outputs'][0] for i in idx]) if idx else None)
    rows.append({'length': length, 'depth': d, 'accuracy': acc, 'n': len(idx),
                 'chance': 100.0 * qa_metrics.passkey_chance(digits),
                 'skipped': cell['skipped'],
                 'examples': [preds[i] for i in idx[:2]]})
  return rows


# ----------------------------------------------------------------------------
# BABILong-style QA.
# ----------------------------------------------------------------------------


def babilong_eval(greedy: Greedy, tokenizer: Any, filler: longctx.Filler, *,
                  tasks: Sequence[str] = ('qa1', 'qa2'), lengths: Sequence[int],
                  depths: Sequence[float | None] = (None,), num_samples: int = 10,
                  seed: int = 0, max_new_tokens: int = 16, data_dir: str = '',
                  samples: dict[str, Sequence[longctx.BabiSample]] | None = None,
                  **record_kwargs) -> list[dict]:
  """EM (official substring rule) and BABILong label match per (task, length, depth).

  `samples` overrides the bAbI test split per task (tests); the chance level is
  the mean `label_chance` over the cell's questions.
  """
  lengths = _check_lengths(lengths, 'QA')
  depths = _check_depths(depths, allow_none=True)
  _check_samples(num_samples)
  cells, records, labels = {}, [], {}
  for task in tasks:
    pool = list(samples[task]) if samples and task in samples else longctx.read_babi(
        task, 'test', data_dir=data_dir)
    labels[task] = longctx.BABILONG_LABELS.get(task) or longctx.babi_labels(pool)
    for length in lengths:
      for d in depths:
        cell = cells.setdefault((task, length, d), {'records': [], 'skipped': 0})
        for i, s in enumerate(pool[:int(num_samples)]):
          _add(cell, records, lambda: longctx.babilong_record(
              s, tokenizer, length, filler, seed=seed, index=i, depth=d, **record_kwargs))
  preds = _generate_texts(greedy, tokenizer, records, max_new_tokens) if records else []
  rows = []
  for (task, length, d), cell in cells.items():
    idx = cell['records']
    p = [preds[i] for i in idx]
    recs = [records[i] for i in idx]
    row = {'task': task, 'length': length, 'depth': d, 'em': None, 'label_match': None,
           'n': len(idx), 'chance': None, 'skipped': cell['skipped'], 'examples': p[:2]}
    if idx:
      row['em'] = qa_metrics.exact_match(p, [r['outputs'] for r in recs])
      row['label_match'] = qa_metrics.label_match_accuracy(
          p, [r['outputs'][0] for r in recs], labels[task], [r['question'] for r in recs])
      row['chance'] = 100.0 * float(np.mean([qa_metrics.label_chance(labels[task],
                                                                     r['question'])
                                             for r in recs]))
    rows.append(row)
  return rows


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def _fmt(v: Any) -> str:
  if v is None:
    return '-'
  if isinstance(v, float):
    return f'{v:.3f}' if abs(v) < 10 else f'{v:.1f}'
  return str(v)


def _mean(values: Sequence[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return float(np.mean(vals)) if vals else None


def _depth_label(d: Any) -> str:
  return 'scatter' if d is None else f'{d:g}'


def markdown_tables(rows: Sequence[dict], *, metric: str, group: str = 'pe', x: str = 'length',
                    depth: str = 'depth', facet: str = 'task', train_length: int | None = None,
                    title: str = '') -> str:
  """`metric` vs `x` (mean over depths) per `group`, one table per `facet`; then an
  x × depth table per (facet, group) when the rows have a `depth` column."""
  if not rows:
    raise ConfigError('no rows to report')
  if any(metric not in r for r in rows):
    raise ConfigError(f'every row needs the metric column {metric!r}')
  facets = list(dict.fromkeys(r.get(facet) for r in rows))
  groups = list(dict.fromkeys(r.get(group) for r in rows))
  xs = sorted({r[x] for r in rows})
  head = [f'{v} ({v / train_length:g}x)' if train_length else str(v) for v in xs]
  has_depth = any(depth in r for r in rows)
  has_chance = any(r.get('chance') is not None for r in rows)
  lines = [f'## {title}\n'] if title else []
  for f in facets:
    sub = [r for r in rows if r.get(facet) == f]
    what = f'{metric}' + (f' on {f}' if f is not None else '') + (
        ' (mean over depths)' if has_depth else '')
    lines += [f'{what}:\n', f'| {group} | ' + ' | '.join(head) + ' |',
              '|---|' + '---|' * len(xs)]
    for g in groups:
      vals = [_mean([r[metric] for r in sub if r.get(group) == g and r[x] == v]) for v in xs]
      lines.append(f'| {g} | ' + ' | '.join(_fmt(v) for v in vals) + ' |')
    if has_chance:
      ch = [_mean([r.get('chance') for r in sub if r[x] == v]) for v in xs]
      lines.append('| chance | ' + ' | '.join(_fmt(v) for v in ch) + ' |')
    lines.append('')
  if has_depth:
    for f in facets:
      for g in groups:
        sub = [r for r in rows if r.get(facet) == f and r.get(group) == g]
        if not sub:
          continue
        ds = list(dict.fromkeys(r.get(depth) for r in sub))
        name = ', '.join(str(v) for v in (f, g) if v is not None)
        lines += [f'{metric} by {x} x {depth}' + (f' ({name})' if name else '') + ':\n',
                  f'| {x} \\ {depth} | ' + ' | '.join(_depth_label(d) for d in ds) + ' |',
                  '|---|' + '---|' * len(ds)]
        for v in xs:
          cell = [_mean([r[metric] for r in sub if r[x] == v and r.get(depth) == d])
                  for d in ds]
          lines.append(f'| {v} | ' + ' | '.join(_fmt(c) for c in cell) + ' |')
        lines.append('')
  if any(r[metric] is None for r in rows):
    lines.append("'-': no record of that cell fits (the prompt and facts are longer than the "
                 'length; see `skipped`).\n')
  return '\n'.join(lines)


def plot(rows: Sequence[dict], path: common.PathLike, *, metric: str, group: str = 'pe',
         x: str = 'length', depth: str = 'depth', facet: str = 'task',
         train_length: int | None = None, title: str = '', max_heatmaps: int = 6,
         vrange: tuple[float, float] | None = None) -> None:
  """`metric` vs `x` (log-x) per (facet, group); plus x × depth heat maps (`imshow`,
  colour scale `vrange`, e.g. (0, 100) for percentages; default: the data's range)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  facets = list(dict.fromkeys(r.get(facet) for r in rows))
  groups = list(dict.fromkeys(r.get(group) for r in rows))
  xs = sorted({r[x] for r in rows})
  has_depth = any(depth in r for r in rows)
  maps = [(f, g) for f in facets for g in groups
          if any(r.get(facet) == f and r.get(group) == g for r in rows)][:max_heatmaps]
  n = 1 + (len(maps) if has_depth else 0)
  fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.9), squeeze=False)
  ax = axes[0, 0]
  for f in facets:
    for g in groups:
      sub = [r for r in rows if r.get(facet) == f and r.get(group) == g]
      if not sub:
        continue
      pts = [(v, _mean([r[metric] for r in sub if r[x] == v])) for v in xs]
      pts = [(a, b) for a, b in pts if b is not None]
      label = ' / '.join(str(v) for v in (g, f) if v is not None) or metric
      if pts:
        ax.plot(*zip(*pts), marker='o', label=label)
  chance = [(v, _mean([r.get('chance') for r in rows if r[x] == v])) for v in xs]
  chance = [(a, b) for a, b in chance if b is not None]
  if chance:
    ax.plot(*zip(*chance), color='grey', linestyle=':', label='chance')
  if train_length:
    ax.axvline(train_length, color='grey', linestyle='--', linewidth=1, label='train length')
  ax.set_xscale('log', base=2)
  ax.set_xlabel(f'{x} (tokens)')
  ax.set_ylabel(metric)
  ax.set_title(title or f'{metric} vs {x}')
  ax.legend(fontsize=7)
  if has_depth:
    for k, (f, g) in enumerate(maps, 1):
      sub = [r for r in rows if r.get(facet) == f and r.get(group) == g]
      ds = list(dict.fromkeys(r.get(depth) for r in sub))
      grid = np.array([[_mean([r[metric] for r in sub if r[x] == v and r.get(depth) == d])
                        for v in xs] for d in ds], dtype=float)  # None -> nan
      a = axes[0, k]
      vmin, vmax = vrange if vrange else (None, None)
      im = a.imshow(grid, aspect='auto', origin='lower', cmap='viridis', interpolation='nearest',
                    vmin=vmin, vmax=vmax)
      a.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7)
      a.set_yticks(range(len(ds)), [_depth_label(d) for d in ds], fontsize=7)
      a.set_xlabel(x)
      a.set_ylabel(depth)
      a.set_title(' / '.join(str(v) for v in (g, f) if v is not None), fontsize=9)
      fig.colorbar(im, ax=a)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(path_prefix: common.PathLike, rows: Sequence[dict], *, metric: str,
                 group: str = 'pe', x: str = 'length', depth: str = 'depth',
                 facet: str = 'task', train_length: int | None = None, title: str = '',
                 meta: dict | None = None, vrange: tuple[float, float] | None = None) -> dict:
  """Writes `<prefix>.json` (rows + meta), `<prefix>.md` (tables) and `<prefix>.png`."""
  rows = list(rows)
  md = markdown_tables(rows, metric=metric, group=group, x=x, depth=depth, facet=facet,
                       train_length=train_length, title=title)
  prefix = pathlib.Path(path_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  report = {'title': title, 'metric': metric, 'train_length': train_length,
            'meta': meta or {}, 'rows': rows}
  pathlib.Path(f'{prefix}.json').write_text(json.dumps(report, indent=2, default=_json_default))
  pathlib.Path(f'{prefix}.md').write_text(md)
  plot(rows, f'{prefix}.png', metric=metric, group=group, x=x, depth=depth, facet=facet,
       train_length=train_length, title=title, vrange=vrange)
  return report


def _json_default(v: Any) -> Any:
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating,)):
    return float(v)
  raise TypeError(f'not JSON serialisable: {type(v).__name__}')


__all__ = ['read_books', 'book_bits', 'Greedy', 'PaddedGreedy', 'CachedGreedy', 'make_greedy',
           'passkey_eval', 'babilong_eval', 'markdown_tables', 'plot', 'write_report',
           'DEFAULT_DEPTHS']
