"""Shared data plumbing: where data and caches live, text reading, atomic caches.

The data directory is treated as read-only (it may be a shared mount), so every
derived artefact (trained tokenizers, token streams, decoded images) goes to a
separate cache directory, written atomically and keyed by a fingerprint of its
inputs so that a changed input never reuses a stale cache.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import pathlib
import uuid
import zlib
from typing import Iterator, Sequence

from absl import flags
import grain

from seqpe_jax.errors import DataError

PathLike = str | os.PathLike

DATA_DIR_ENV = 'SEQPE_DATA_DIR'
CACHE_DIR_ENV = 'SEQPE_CACHE_DIR'

# Bump when the layout of any cached artefact changes, so old caches are ignored.
CACHE_VERSION = 1

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_data_dir() -> pathlib.Path:
  """`<repo root>/../shared/data`, where the offline corpora are mounted."""
  return _REPO_ROOT.parent / 'shared' / 'data'


def resolve_data_dir(configured: str = '') -> pathlib.Path:
  """Returns the data directory: `configured`, else $SEQPE_DATA_DIR, else the default."""
  if configured:
    path, origin = pathlib.Path(configured).expanduser(), 'config.data.dir'
  elif os.environ.get(DATA_DIR_ENV):
    path, origin = pathlib.Path(os.environ[DATA_DIR_ENV]).expanduser(), f'${DATA_DIR_ENV}'
  else:
    path, origin = default_data_dir(), 'the default'
  if not path.is_dir():
    raise DataError(
        f'data directory {path} (from {origin}) does not exist; set '
        f'--config.data.dir or ${DATA_DIR_ENV} to the folder holding the datasets')
  return path


def resolve_path(path: str, configured_dir: str = '') -> pathlib.Path:
  """`path` if absolute, else relative to the data dir (which must then exist)."""
  path = pathlib.Path(path).expanduser()
  return path if path.is_absolute() else resolve_data_dir(configured_dir) / path


def resolve_cache_dir(configured: str = '') -> pathlib.Path:
  """Returns (and creates) the cache dir: `configured`, $SEQPE_CACHE_DIR or ~/.cache."""
  if configured:
    path = pathlib.Path(configured).expanduser()
  elif os.environ.get(CACHE_DIR_ENV):
    path = pathlib.Path(os.environ[CACHE_DIR_ENV]).expanduser()
  else:
    path = pathlib.Path.home() / '.cache' / 'seqpe_jax'
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f'cannot create cache directory {path}: {one_line(e)}; '
                    f'set --config.data.cache_dir or ${CACHE_DIR_ENV}') from e
  return path


def one_line(e: BaseException) -> str:
  """The first line of an exception message, so our errors stay one line."""
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')


# ----------------------------------------------------------------------------
# Reading (possibly compressed) text.
# ----------------------------------------------------------------------------

_OPENERS = {'.xz': lzma.open, '.gz': gzip.open, '.bz2': bz2.open}
# What corrupt compression or bad UTF-8 raises from the stdlib decoders.
_DECODE_ERRORS = (lzma.LZMAError, zlib.error, EOFError, OSError, UnicodeDecodeError)


def open_binary(path: PathLike) -> io.BufferedIOBase:
  """Opens a plain, .xz, .gz or .bz2 file for binary reading (decompressing)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'data file not found: {path}')
  return _OPENERS.get(path.suffix, open)(path, 'rb')


def iter_text_chunks(path: PathLike, chunk_chars: int = 1 << 22) -> Iterator[str]:
  """Yields the decoded text of `path` in line-aligned chunks of ~chunk_chars.

  Chunks end on a newline (except possibly the last), so a tokenizer that works
  line by line sees the same lines as it would on the whole text. Newlines are
  kept verbatim (no universal-newline translation).
  """
  path = pathlib.Path(path)
  empty = True
  try:
    with open_binary(path) as raw, io.TextIOWrapper(raw, encoding='utf-8', newline='') as f:
      while True:
        chunk = f.read(chunk_chars)
        if not chunk:
          break
        rest = '' if chunk.endswith('\n') else f.readline()
        empty = False
        yield chunk + rest
  except DataError:
    raise
  except _DECODE_ERRORS as e:
    raise DataError(f'cannot decode {path} (corrupt compression or not UTF-8 '
                    f'text): {one_line(e)}') from e
  if empty:
    raise DataError(f'data file is empty: {path}')


def open_text(path: PathLike) -> str:
  """Reads a whole plain/.xz/.gz/.bz2 UTF-8 text file; one-line DataError on failure."""
  return ''.join(iter_text_chunks(path))


# ----------------------------------------------------------------------------
# Caches.
# ----------------------------------------------------------------------------


def fingerprint(paths: Sequence[PathLike], *extra: object) -> str:
  """A short key that changes when any input file (path, size, mtime) or `extra` does."""
  h = hashlib.sha256(f'v{CACHE_VERSION}'.encode())
  for p in paths:
    p = pathlib.Path(p).resolve()
    try:
      st = p.stat()
    except OSError as e:
      raise DataError(f'data file not found: {p}') from e
    h.update(f'|{p}|{st.st_size}|{st.st_mtime_ns}'.encode())
  for x in extra:
    h.update(f'|{x!r}'.encode())
  return h.hexdigest()[:16]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling of `path`; renames it onto `path` on success.

  `os.replace` is atomic within a directory, so readers (and a process killed
  mid-write) never see a half-written cache; on error the temp file is removed.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


# ----------------------------------------------------------------------------
# Multi-host sharding.
# ----------------------------------------------------------------------------


# One convention for every per-process split, training and evaluation alike: the data form
# global batches of `global_batch = local_batch * count` rows, and process i holds rows
# [i * local_batch, (i + 1) * local_batch) of each. The global batches do not depend on the
# process count, so a run resumes on a different number of hosts with the same data.


def process_batches(dataset: grain.MapDataset, local_batch: int, index: int,
                    count: int) -> grain.MapDataset:
  """This process's batches of `local_batch` rows: batch b is rows
  `[b * G + index * local_batch, ...)` of `dataset`, G = local_batch * count.

  grain slicing: the local batches of all processes in global order, every `count`-th
  from `index`; only this process's rows are ever read. Incomplete global batches are
  dropped, so every process yields the same number of batches.
  """
  if count < 1 or not 0 <= index < count or local_batch < 1:
    raise ValueError(f'bad process split: local batch {local_batch}, process {index}/{count}')
  full = len(dataset) // (local_batch * count) * local_batch * count
  return dataset[:full].batch(local_batch, drop_remainder=True)[index::count]


def local_rows(num_rows: int, local_batch: int, index: int, count: int) -> Iterator[range]:
  """Row ranges of this process's evaluation batches (the `process_batches` convention).

  The last global batch may be partial: a process whose share is short (or empty) gets a
  short range, and pads; every process yields `ceil(num_rows / (local_batch * count))`.
  """
  if count < 1 or not 0 <= index < count or local_batch < 1:
    raise ValueError(f'bad process split: local batch {local_batch}, process {index}/{count}')
  g = local_batch * count
  for start in range(0, num_rows, g):
    lo = start + index * local_batch
    yield range(min(lo, num_rows), min(lo + local_batch, num_rows))


def seek(iterator: grain.DatasetIterator, batches: int) -> None:
  """Positions a (batched, in-process) iterator after `batches` batches.

  The data order depends only on (seed, global step), so this resumes a run whose
  saved iterator state cannot be used (e.g. a different host count).
  """
  state = iterator.get_state()
  if not isinstance(state, dict) or 'next_index' not in state:
    raise ValueError('cannot seek this iterator (use num_workers=0 to resume on a new topology)')
  iterator.set_state({**state, 'next_index': batches})


def to_iterator(dataset: grain.MapDataset, num_workers: int = 0) -> grain.DatasetIterator:
  """Iterates `dataset`, prefetching in `num_workers` processes when > 0.

  The iterator has `get_state()`/`set_state()` for exact resumption (also with workers).
  """
  it_ds = dataset.to_iter_dataset()
  if num_workers > 0:
    # grain's workers read absl flags, which are unparsed outside `app.run` (tests, notebooks).
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


# ----------------------------------------------------------------------------
# TFDS (random access, no TensorFlow needed, never downloads).
# ----------------------------------------------------------------------------

_TFDS_SPLIT_ALIASES = {'valid': 'validation', 'validation': 'valid'}


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source` of a prepared (array_record) dataset; one-line DataError if absent."""
  # Imported here: TFDS is optional and slow to import.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  error = None
  for s in (split, _TFDS_SPLIT_ALIASES.get(split)):
    if s is None:
      continue
    try:
      return tfds.data_source(name, split=s, data_dir=data_dir or None, download=False)
    except Exception as e:  # pylint: disable=broad-except
      error = error or e  # TFDS raises many types; report the first cause.
  raise DataError(
      f'TFDS dataset {name!r} split {split!r} is not prepared under '
      f'{data_dir or "the default TFDS data dir"}; build it with `tfds build {name} '
      f'--file_format=array_record` ({one_line(error)})') from error
