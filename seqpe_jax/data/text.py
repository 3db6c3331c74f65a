"""Language-modelling data: token streams, grain train iterators, eval batches.

A corpus becomes one flat int32 token stream (files concatenated, newlines
kept). Training reads non-overlapping windows of `seq_len + 1` tokens through
grain so the iterator state resumes the data position exactly; evaluation cuts
the stream into padded, weighted batches in which every token is scored once.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from seqpe_jax.data import common
from seqpe_jax.data.tokenizers import (  # noqa: F401  (re-exported)
    ByteTokenizer, SentencePieceTokenizer, Tokenizer, build_tokenizer)
from seqpe_jax.errors import ConfigError, DataError

# ----------------------------------------------------------------------------
# Corpora → token streams.
# ----------------------------------------------------------------------------

# '-raw' names are the untokenised releases (`wiki.<split>.raw`, no <unk>; the official text
# recipe trains on wikitext-103-raw-v1); the others the tokenised `wiki.<split>.tokens`.
WIKITEXT_NAMES = ('wikitext-2', 'wikitext-103', 'wikitext-2-raw', 'wikitext-103-raw')
CORPORA = WIKITEXT_NAMES + ('gutenberg', 'files')  # data.name values besides 'tfds:<name>'
_SUFFIXES = ('', '.xz', '.gz', '.bz2')


def wikitext_files(data_dir: common.PathLike, name: str) -> dict[str, pathlib.Path]:
  """Maps each available split ('train'/'valid'/'test') to its `wiki.<split>.tokens[.xz]`
  (`wiki.<split>.raw[.xz]` for the '-raw' names, read from the folder without '-raw')."""
  if name not in WIKITEXT_NAMES:
    raise ConfigError(f'unknown WikiText name {name!r}; expected one of {WIKITEXT_NAMES}')
  raw = name.endswith('-raw')
  root = pathlib.Path(data_dir) / name.removesuffix('-raw')
  ext = 'raw' if raw else 'tokens'
  expected = f'wiki.{{train,valid,test}}.{ext}[.xz] in {root}'
  if not root.is_dir():
    raise DataError(f'{name} directory not found: expected {expected}')
  files = {}
  for split in ('train', 'valid', 'test'):
    found = [root / f'wiki.{split}.{ext}{s}' for s in _SUFFIXES]
    found = [p for p in found if p.is_file()]
    if found:
      files[split] = found[0]
  if not files:
    raise DataError(f'no {name} files found: expected {expected}')
  return files


def tokenize_files(tokenizer: Tokenizer, paths: Sequence[common.PathLike],
                   cache_dir: common.PathLike | None = None) -> np.ndarray:
  """One int32 stream of the concatenated files, cached as .npy (memory-mapped on load)."""
  paths = [pathlib.Path(p) for p in paths]
  if not paths:
    raise DataError('no text files given to tokenize')
  cache = None
  if cache_dir is not None:
    key = common.fingerprint(paths, tokenizer.name)
    cache = pathlib.Path(cache_dir) / 'tokens' / f'{tokenizer.name}-{key}.npy'
    if cache.exists():
      return np.load(cache, mmap_mode='r')
  # Line-aligned chunks keep peak memory at ~one chunk of text plus the ids.
  chunks, text = [], '\n'
  for path in paths:
    if not text.endswith('\n'):  # Keep files apart by a line break.
      chunks.append(np.asarray(tokenizer.encode('\n'), np.int32))
    for text in common.iter_text_chunks(path):
      chunks.append(np.asarray(tokenizer.encode(text), np.int32))
  stream = np.concatenate(chunks)
  if cache is None:
    return stream
  with common.atomic_path(cache) as tmp, open(tmp, 'wb') as f:
    np.save(f, stream)
  return np.load(cache, mmap_mode='r')


_TEXT_KEYS = ('text', 'book_text', 'content', 'document', 'article', 'sentence')


def _tfds_text_key(source, text_key: str | None) -> str:
  """`text_key`, else the first usual text feature name, else the first Text feature."""
  features = source.dataset_info.features
  if text_key:
    if text_key not in features:
      raise ConfigError(f'TFDS features have no {text_key!r}: {sorted(features.keys())}')
    return text_key
  for key in _TEXT_KEYS:
    if key in features:
      return key
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for key in features.keys():
    if isinstance(features[key], tfds.features.Text):
      return key
  raise DataError(f'no text feature among TFDS features {sorted(features.keys())}')


def tfds_text_stream(name: str, split: str, tokenizer: Tokenizer, data_dir: str | None = None,
                     text_key: str | None = None, max_examples: int | None = None,
                     cache_dir: common.PathLike | None = None) -> np.ndarray:
  """Token stream of a prepared TFDS text dataset (documents joined by newlines)."""
  source = common.tfds_source(name, split, data_dir)
  key = _tfds_text_key(source, text_key)
  n = len(source) if not max_examples else min(max_examples, len(source))
  cache = None
  if cache_dir is not None:
    fp = common.fingerprint([], name, split, data_dir, key, n, len(source), tokenizer.name)
    cache = pathlib.Path(cache_dir) / 'tokens' / f'{tokenizer.name}-tfds-{fp}.npy'
    if cache.exists():
      return np.load(cache, mmap_mode='r')
  parts = [np.zeros([0], np.int32)]
  for text in _tfds_texts(source, key, n):
    parts.append(np.asarray(tokenizer.encode(text + '\n'), np.int32))
  stream = np.concatenate(parts)
  if len(stream) < 2:
    raise DataError(f'TFDS dataset {name!r} split {split!r} has no text')
  if cache is not None:
    with common.atomic_path(cache) as tmp, open(tmp, 'wb') as f:
      np.save(f, stream)
  return stream


def _tfds_texts(source, key: str, n: int) -> Iterator[str]:
  for i in range(n):
    text = source[i][key]
    yield text.decode('utf-8', errors='replace') if isinstance(text, bytes) else str(text)


def _tfds_training_text(name: str, data_dir: str | None, cache_dir: pathlib.Path,
                        max_chars: int = 100_000_000) -> pathlib.Path:
  """A text file with the start of a TFDS train split, for training sentencepiece."""
  source = common.tfds_source(name, 'train', data_dir)
  key = _tfds_text_key(source, None)
  path = cache_dir / 'tfds_text' / f'{name}-{common.fingerprint([], data_dir, len(source))}.txt'
  if not path.exists():
    with common.atomic_path(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
      total = 0
      for text in _tfds_texts(source, key, len(source)):
        total += f.write(text + '\n')
        if total >= max_chars:
          break
  return path


# ----------------------------------------------------------------------------
# Training windows through grain.
# ----------------------------------------------------------------------------


class LMSource:
  """Random-access source of non-overlapping windows of a token stream.

  Example i is `stream[i*L : i*L + L + 1]` split into next-token inputs/targets;
  only full windows are used. A memory-mapped cached stream is pickled as its
  path (grain workers re-open it) instead of copying the whole array.
  """

  def __init__(self, stream: np.ndarray, seq_len: int):
    if seq_len < 1:
      raise ConfigError(f'seq_len must be positive, got {seq_len}')
    if stream.ndim != 1 or len(stream) < seq_len + 1:
      raise DataError(f'token stream of {len(stream)} tokens is shorter than '
                      f'seq_len + 1 = {seq_len + 1}')
    self._stream, self.seq_len, self._path = stream, seq_len, None
    if isinstance(stream, np.memmap) and stream.filename:
      whole = np.load(stream.filename, mmap_mode='r')  # Reads only the header.
      if whole.shape == stream.shape and whole.offset == stream.offset:
        self._path = stream.filename

  def __len__(self) -> int:
    return (len(self._stream) - 1) // self.seq_len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    start = index * self.seq_len
    window_L1 = np.asarray(self._stream[start:start + self.seq_len + 1], np.int32)
    return {'inputs': window_L1[:-1], 'targets': window_L1[1:]}

  def __repr__(self) -> str:
    return f'LMSource(tokens={len(self._stream)}, seq_len={self.seq_len})'

  def __getstate__(self):
    return {**self.__dict__, '_stream': None} if self._path else self.__dict__

  def __setstate__(self, state):
    self.__dict__.update(state)
    if self._stream is None:
      self._stream = np.load(self._path, mmap_mode='r')


def lm_train_iter(stream: np.ndarray, *, seq_len: int, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  num_workers: int = 0) -> grain.DatasetIterator:
  """Endless shuffled per-process batches {'inputs','targets': int32 [B, L]}.

  `batch_size` is per process; process i gets rows `[i*B, (i+1)*B)` of each global
  batch (`common.process_batches`). The iterator's `get_state()`/`set_state()` resume the exact data position.
  """
  _check_batch_size(batch_size)
  ds = grain.MapDataset.source(LMSource(stream, seq_len))
  if batch_size * process_count > len(ds):
    raise DataError(f'batch size {batch_size * process_count} exceeds the {len(ds)} training '
                    f'windows of {seq_len + 1} tokens; lower the batch size or seq_len, or '
                    'add data')
  # Global order first, then this process's rows of each global batch: the global batches
  # do not depend on the number of processes.
  ds = common.process_batches(ds.shuffle(seed=seed).repeat(), batch_size, process_index,
                              process_count)
  return common.to_iterator(ds, num_workers)


# ----------------------------------------------------------------------------
# Evaluation: every token after the first is scored exactly once.
# ----------------------------------------------------------------------------


def _eval_stream(stream: np.ndarray, max_tokens: int | None) -> np.ndarray:
  stream = stream[:max_tokens] if max_tokens else stream
  if len(stream) < 2:
    raise DataError(f'evaluation stream has {len(stream)} tokens; need at least 2')
  return stream


def lm_eval_chunks(stream: np.ndarray, length: int,
                   max_tokens: int | None = None) -> list[np.ndarray]:
  """Chunks of `length + 1` tokens at stride `length`; the last one may be shorter."""
  if length < 1:
    raise ConfigError(f'evaluation length must be positive, got {length}')
  stream = _eval_stream(stream, max_tokens)
  return [np.asarray(stream[i:i + length + 1], np.int32)
          for i in range(0, len(stream) - 1, length)]


def _check_batch_size(batch_size: int) -> None:
  if batch_size < 1:
    raise ConfigError(f'batch_size must be positive, got {batch_size}')


def _padded_batches(rows: Iterator[tuple[np.ndarray, int, int]], length: int,
                    batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Packs (window, first scored, end scored) rows into zero-padded weighted batches."""

  def empty():
    return {'inputs': np.zeros([batch_size, length], np.int32),
            'targets': np.zeros([batch_size, length], np.int32),
            'weights': np.zeros([batch_size, length], np.float32)}

  batch, r = empty(), 0
  for window, lo, hi in rows:
    n = len(window) - 1
    batch['inputs'][r, :n] = window[:-1]
    batch['targets'][r, :n] = window[1:]
    batch['weights'][r, lo:hi] = 1.0
    r += 1
    if r == batch_size:
      yield batch
      batch, r = empty(), 0
  if r:
    yield batch


def lm_eval_batches(stream: np.ndarray, length: int, batch_size: int,
                    max_tokens: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Non-overlapping eval batches {'inputs','targets' int32, 'weights' f32: [B, length]}."""
  _check_batch_size(batch_size)
  chunks = lm_eval_chunks(stream, length, max_tokens)
  return _padded_batches(((c, 0, len(c) - 1) for c in chunks), length, batch_size)


def lm_sliding_batches(stream: np.ndarray, length: int, stride: int, batch_size: int,
                       max_tokens: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Sliding windows of `length` advancing by `stride`; each window scores its new tokens.

  The first window scores all its targets, later ones only the last `stride`
  (so every scored token sees at least length - stride tokens of context); the
  final window is aligned to the stream's end to keep its context full.
  """
  if not 1 <= stride <= length:
    raise ConfigError(f'sliding stride must be in [1, length={length}], got {stride}')
  _check_batch_size(batch_size)
  stream = _eval_stream(stream, max_tokens)
  n = len(stream)

  def rows():
    last_start, done, k = max(0, n - 1 - length), 0, 0  # Targets 1..done are scored.
    while done < n - 1:
      start = min(k * stride, last_start)
      end = min(start + length, n - 1)
      window = np.asarray(stream[start:end + 1], np.int32)
      yield window, done - start, end - start  # Target t sits at column t - start - 1.
      done, k = end, k + 1

  return _padded_batches(rows(), length, batch_size)


# ----------------------------------------------------------------------------
# Config glue.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class LMData:
  tokenizer: Tokenizer
  train_iter: grain.DatasetIterator
  eval_stream: Callable[[str], np.ndarray]  # split name -> token stream.
  train_tokens: int


def gutenberg_corpus(data_dir: str = '', cache_dir: common.PathLike | None = None
                     ) -> dict[str, list[pathlib.Path]]:
  """Train/valid/test text files of the Gutenberg LM corpus (`data.name=gutenberg`).

  train: the 'train' books of `longctx.gutenberg_split` (never QA filler or book-bits
  books); valid / test: the held-out 'eval' books, alternately (sorted by name). Each
  split is one file of whole stripped books, written once under the cache dir.
  """
  from seqpe_jax.data import longctx  # pylint: disable=g-import-not-at-top
  root = common.resolve_cache_dir(str(cache_dir or ''))
  tar = common.resolve_path(longctx.GUTENBERG_TAR, data_dir)
  if not tar.is_file():
    raise DataError(f'Gutenberg archive not found: {tar} (expected {longctx.GUTENBERG_TAR} in '
                    'the data dir)')
  out_dir = root / 'gutenberg_corpus' / common.fingerprint([tar], 1)
  names = {'train': longctx.list_gutenberg(data_dir=data_dir, split='train')}
  held = longctx.list_gutenberg(data_dir=data_dir, split='eval')
  names['valid'], names['test'] = held[0::2], held[1::2]
  files = {}
  for split, books in names.items():
    path = out_dir / f'{split}.txt'
    if not path.is_file():
      texts = longctx.read_gutenberg(names=books, data_dir=data_dir, cache_dir=root)
      out_dir.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix('.tmp')
      tmp.write_text('\n\n'.join(texts[b] for b in books) + '\n', 'utf-8')
      tmp.replace(path)
    files[split] = [path]
  return files


def _split_files(data_cfg: ml_collections.ConfigDict) -> dict[str, list[pathlib.Path]]:
  """Split → text files for `name` in {'wikitext-2', 'wikitext-103', 'gutenberg', 'files'}."""
  name = data_cfg.name
  if name in WIKITEXT_NAMES:
    files = wikitext_files(common.resolve_data_dir(data_cfg.get('dir', '')), name)
    return {split: [path] for split, path in files.items()}
  if name == 'gutenberg':
    return gutenberg_corpus(data_cfg.get('dir', ''), data_cfg.get('cache_dir', ''))
  if name != 'files':
    raise ConfigError(f"unknown config.data.name {name!r}; expected one of "
                      f"{', '.join(CORPORA)} or 'tfds:<name>'")
  out = {}
  for split, field in (('train', 'train_files'), ('eval', 'eval_files')):
    paths = [common.resolve_path(p.strip(), data_cfg.get('dir', ''))
             for p in data_cfg.get(field, '').split(',') if p.strip()]
    for p in paths:
      if not p.is_file():
        raise DataError(f'data file not found: {p} (from config.data.{field})')
    if paths:
      out[split] = paths
  return out


def _tfds_name(data_cfg) -> str | None:
  name = data_cfg.name
  return name[len('tfds:'):] if name.startswith('tfds:') else None


def build_lm_eval_stream(data_cfg: ml_collections.ConfigDict, split: str,
                         tokenizer: Tokenizer) -> np.ndarray:
  """The token stream of `split` of the configured corpus (cached)."""
  cache_dir = common.resolve_cache_dir(data_cfg.get('cache_dir', ''))
  if tfds_name := _tfds_name(data_cfg):
    return tfds_text_stream(tfds_name, split, tokenizer, data_cfg.get('tfds_data_dir') or None,
                            max_examples=data_cfg.get('max_eval_examples') or None,
                            cache_dir=cache_dir)
  files = _split_files(data_cfg)
  key = split if data_cfg.name != 'files' or split == 'train' else 'eval'
  if key not in files:
    raise DataError(f'split {split!r} of {data_cfg.name} not found (have {sorted(files)})')
  return tokenize_files(tokenizer, files[key], cache_dir)


def build_lm_data(data_cfg: ml_collections.ConfigDict, *, seq_len: int, batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1) -> LMData:
  """Tokenizer, per-process train iterator and eval-stream getter from `config.data`."""
  cache_dir = common.resolve_cache_dir(data_cfg.get('cache_dir', ''))
  if tfds_name := _tfds_name(data_cfg):
    tfds_dir = data_cfg.get('tfds_data_dir') or None
    sample = ([_tfds_training_text(tfds_name, tfds_dir, cache_dir)]
              if data_cfg.get('tokenizer', 'sentencepiece') == 'sentencepiece' else [])
    tokenizer = build_tokenizer(data_cfg, sample, cache_dir)
    stream = tfds_text_stream(tfds_name, 'train', tokenizer, tfds_dir, cache_dir=cache_dir,
                              max_examples=data_cfg.get('max_train_examples') or None)
  else:
    files = _split_files(data_cfg)
    if 'train' not in files:
      ext = 'raw' if data_cfg.name.endswith('-raw') else 'tokens'
      raise DataError(f'{data_cfg.name} has no train split (found {sorted(files)}); put '
                      f'wiki.train.{ext}[.xz] next to the others, or use data.name=files with '
                      'data.train_files / data.eval_files')
    tokenizer = build_tokenizer(data_cfg, files['train'], cache_dir)
    stream = tokenize_files(tokenizer, files['train'], cache_dir)
  if data_cfg.get('sft') and data_cfg.sft.get('source', ''):
    # Long-context QA fine-tuning: the corpus gives the tokenizer and the evaluation streams,
    # the training batches are prompt -> answer examples (loss on the answer only).
    from seqpe_jax.data import qa  # pylint: disable=g-import-not-at-top
    train_iter, _ = qa.build_sft_iter(data_cfg, tokenizer, seq_len=seq_len,
                                      batch_size=batch_size, seed=seed,
                                      process_index=process_index, process_count=process_count)
  else:
    train_iter = lm_train_iter(stream, seq_len=seq_len, batch_size=batch_size, seed=seed,
                               process_index=process_index, process_count=process_count,
                               num_workers=data_cfg.get('num_workers', 0))
  return LMData(tokenizer, train_iter,
                lambda split: build_lm_eval_stream(data_cfg, split, tokenizer), len(stream))
