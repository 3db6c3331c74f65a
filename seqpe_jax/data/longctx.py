"""Offline long-context evaluation data: Gutenberg books, bAbI, BABILong-style QA, passkeys.

Everything here is host-side Python/numpy. Generated QA records use the RULER /
SeqPE `squad_qa` layout `{'index', 'input', 'outputs': [answer, ...]}` plus a few
extra fields (`task`, `length`, `depth`, token positions of the hidden facts) so
that scoring and depth/length breakdowns need nothing else.

Gutenberg split rule (`gutenberg_split`): a book's split depends only on its file
name, `int(sha256('seqpe-gutenberg-split:' + name)[:8], 16) % 10`: bucket 0 is
'eval' (bits-per-character), bucket 1 is 'filler' (haystacks for QA/passkey),
buckets 2-9 are 'train' (the only books an LM may ever be trained on). Adding
books never moves existing ones. On the shared 85-book set: 6 eval, 11 filler,
68 train books.

Length and depth conventions (both generators):
* `length` is the token count of the whole `input` (prompt template included).
  It never exceeds the requested length and falls short by less than one filler
  sentence plus a few tokens (filler sentences are capped at
  `max_sentence_tokens`), because text is only cut at sentence boundaries.
* `depth` d in [0, 1] is the fraction of the filler tokens that precede the
  first hidden fact (d=0: facts open the context, d=1: they close it); facts
  are inserted only at sentence boundaries, so the realised depth is within one
  filler sentence of d. `depth=None` (BABILong's default) scatters every fact at
  an independent uniformly random boundary, order kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import tarfile
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from seqpe_jax.data import common
from seqpe_jax.errors import ConfigError, DataError

GUTENBERG_TAR = 'gutenberg/books.tar.xz'
BABI_TAR = 'babi/babi-tasks_1-20_v1-2-en.tar.xz'
GUTENBERG_SPLITS = ('train', 'filler', 'eval')
_SPLIT_SALT = 'seqpe-gutenberg-split:'
_STRIP_VERSION = 2  # Bump when `strip_gutenberg` changes (cached books are keyed by it).


class Encoder(Protocol):
  """Anything with `encode(str) -> sequence of ids` (ByteTokenizer, SentencePieceTokenizer)."""

  def encode(self, text: str) -> Any: ...


def _ntok(tokenizer: Encoder, text: str) -> int:
  return len(tokenizer.encode(text)) if text else 0


def _marginal(tokenizer: Encoder, sentence: str) -> int:
  """Tokens `sentence` adds after a space inside running text.

  Encoding ' ' + sentence alone would over-count for SentencePiece (a lone
  leading-space piece), so measure it after a word instead.
  """
  return _ntok(tokenizer, 'a ' + sentence) - _ntok(tokenizer, 'a')


def _token_at(tokenizer: Encoder, text: str, char: int) -> int:
  """Index of the token of `tokenizer.encode(text)` that holds character `char`.

  The last token of encode(text[:char + 1]) holds that character; encoding
  text[:char] instead would end in a lone space piece before a word.
  """
  return _ntok(tokenizer, text[:char + 1]) - 1


# ----------------------------------------------------------------------------
# Gutenberg books.
# ----------------------------------------------------------------------------


def gutenberg_split(name: str) -> str:
  """'eval', 'filler' or 'train' for a book file name (see the module docstring)."""
  bucket = int(hashlib.sha256((_SPLIT_SALT + pathlib.PurePath(name).name).encode())
               .hexdigest()[:8], 16) % 10
  return 'eval' if bucket == 0 else 'filler' if bucket == 1 else 'train'


# '*** START OF THE PROJECT GUTENBERG EBOOK X ***', also 'THIS', 'E-BOOK', '*END*' variants.
_START = re.compile(r'^\s*\*{3}\s*START OF (?:THE |THIS )?PROJECT GUTENBERG E-?BOOK[^\n]*$',
                    re.IGNORECASE | re.MULTILINE)
# Also the older unstarred footer "End of (the) Project Gutenberg's X" / "... EBook of X".
_END = re.compile(r'^\s*(?:\*{3}\s*)?END OF (?:THE |THIS )?PROJECT GUTENBERG'
                  r'(?:\s*E-?BOOK|\s*ETEXT|\'S|\u2019S)[^\n]*$',
                  re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
  """The book body between the PG START and END markers (BOM dropped, CRLF -> LF).

  A missing START marker keeps the text from its beginning, a missing END marker
  keeps it to its end, so non-PG texts pass through unchanged (apart from newlines).
  """
  text = text.lstrip('\ufeff').replace('\r\n', '\n')
  start = _START.search(text)
  lo = start.end() if start else 0
  end = _END.search(text, lo)
  hi = end.start() if end else len(text)
  return text[lo:hi].strip('\n')


def _gutenberg_tar(tar_path: common.PathLike | None, data_dir: str) -> pathlib.Path:
  path = pathlib.Path(tar_path) if tar_path else common.resolve_path(GUTENBERG_TAR, data_dir)
  if not path.is_file():
    raise DataError(f'Gutenberg archive not found: {path} (expected {GUTENBERG_TAR} in the '
                    f'data dir)')
  return path


def _manifest(path: pathlib.Path, cache: pathlib.Path | None) -> list[str] | None:
  if cache is not None and (cache / 'names.json').is_file():
    return json.loads((cache / 'names.json').read_text('utf-8'))
  return None


def _cache_dir(path: pathlib.Path, cache_dir: common.PathLike | None) -> pathlib.Path | None:
  if cache_dir is None:
    return None
  # The stripping rules are part of the key: changing them must not reuse old texts.
  return pathlib.Path(cache_dir) / 'gutenberg' / common.fingerprint([path], _STRIP_VERSION)


def _check_split(split: str | None) -> None:
  if split is not None and split not in GUTENBERG_SPLITS:
    raise ConfigError(f'Gutenberg split must be one of {GUTENBERG_SPLITS}, got {split!r}')


def read_gutenberg(split: str | None = None, *, names: Sequence[str] | None = None,
                   tar_path: common.PathLike | None = None, data_dir: str = '',
                   cache_dir: common.PathLike | None = None) -> dict[str, str]:
  """{member name: stripped text} for the books of `split` (all if None) or exactly `names`.

  The archive is streamed once (never extracted into the read-only data dir); with
  a `cache_dir`, the member list and each stripped book are cached there, keyed
  by the archive's fingerprint, so later calls do not decompress it again.
  """
  _check_split(split)
  if split is not None and names is not None:
    raise ConfigError('read_gutenberg: pass a split or names, not both')
  path = _gutenberg_tar(tar_path, data_dir)
  cache = _cache_dir(path, cache_dir)
  listed = _manifest(path, cache)
  if names is not None:
    wanted = set(names)
  elif listed is not None:
    wanted = {n for n in listed if split is None or gutenberg_split(n) == split}
  else:
    wanted = None  # Decided per member while streaming.

  def cached(name: str) -> pathlib.Path | None:
    return None if cache is None else cache / pathlib.PurePath(name).name

  out: dict[str, str] = {}
  for name in wanted or ():
    c = cached(name)
    if c is not None and c.is_file():
      out[name] = c.read_text('utf-8')
  if wanted is None or wanted - set(out):
    seen = []
    try:
      with tarfile.open(path, 'r|*') as tf:
        for member in tf:
          if not (member.isfile() and member.name.endswith('.txt')):
            continue
          seen.append(member.name)
          name = member.name
          take = (split is None or gutenberg_split(name) == split) if wanted is None \
              else name in wanted
          if take and name not in out:
            text = strip_gutenberg(tf.extractfile(member).read().decode('utf-8'))
            out[name] = text
            if cache is not None:
              common.atomic_write_bytes(cached(name), text.encode('utf-8'))
          if wanted is not None and not wanted - set(out):
            break  # No need to decompress past the last wanted book.
        else:
          if cache is not None:
            common.atomic_write_bytes(cache / 'names.json', json.dumps(sorted(seen)).encode())
    except (tarfile.TarError, *common._DECODE_ERRORS) as e:  # pylint: disable=protected-access
      raise DataError(f'cannot read {path}: {common.one_line(e)}') from e
    if wanted is not None and wanted - set(out):
      raise DataError(f'books not in {path}: {sorted(wanted - set(out))[:5]}')
  if not out:
    raise DataError(f'no {split or ""} books in {path}'.replace('  ', ' '))
  return {n: out[n] for n in sorted(out)}


def list_gutenberg(tar_path: common.PathLike | None = None, data_dir: str = '',
                   split: str | None = None,
                   cache_dir: common.PathLike | None = None) -> list[str]:
  """Sorted `.txt` member names of the books archive (optionally of one split)."""
  _check_split(split)
  path = _gutenberg_tar(tar_path, data_dir)
  names = _manifest(path, _cache_dir(path, cache_dir))
  if names is None:
    try:
      with tarfile.open(path, 'r|*') as tf:
        names = [m.name for m in tf if m.isfile() and m.name.endswith('.txt')]
    except (tarfile.TarError, *common._DECODE_ERRORS) as e:  # pylint: disable=protected-access
      raise DataError(f'cannot read {path}: {common.one_line(e)}') from e
  return sorted(n for n in names if split is None or gutenberg_split(n) == split)


# ----------------------------------------------------------------------------
# Sentences and filler.
# ----------------------------------------------------------------------------

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace.
_SENT_END = re.compile(r'(?<=[.!?])\s+|(?<=[.!?]["\'\u201d\u2019)\]])\s+')
_ABBREV = re.compile(r'\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|Capt|Col|Gen|Rev|Mt|No|vs|[A-Z])\.$')


def split_sentences(text: str) -> list[str]:
  """Sentences of `text` with whitespace (newlines included) collapsed to single spaces.

  A cheap rule (no NLTK offline): split after . ! ? (+ closing quote), but not
  after common title abbreviations or single initials ("Mr.", "J.").
  """
  pieces = _SENT_END.split(re.sub(r'\s+', ' ', text).strip())
  out: list[str] = []
  for p in pieces:
    if out and _ABBREV.search(out[-1]):
      out[-1] += ' ' + p
    elif p:
      out.append(p)
  return out


class Filler:
  """A cyclic list of filler sentences with memoised token counts.

  `Filler.from_books(texts)` uses book sentences (a random start per record);
  `Filler.repeat(PASSKEY_GARBAGE)` the classic repeated passkey noise (start 0).
  """

  def __init__(self, sentences: Sequence[str], random_start: bool = True):
    self.sentences = [s for s in sentences if s.strip()]
    if not self.sentences:
      raise DataError('filler has no sentences')
    self.random_start = random_start
    self._counts: dict[tuple[Any, int], int] = {}

  @classmethod
  def from_books(cls, texts: Iterable[str]) -> 'Filler':
    return cls([s for t in texts for s in split_sentences(t)], random_start=True)

  @classmethod
  def repeat(cls, sentences: Sequence[str]) -> 'Filler':
    return cls(sentences, random_start=False)

  def __len__(self) -> int:
    return len(self.sentences)

  def count(self, tokenizer: Encoder, i: int) -> int:
    key = (getattr(tokenizer, 'name', None) or id(tokenizer), i)
    if key not in self._counts:
      # With a leading space, as the sentence appears inside the joined context.
      self._counts[key] = _marginal(tokenizer, self.sentences[i])
    return self._counts[key]

  def take(self, tokenizer: Encoder, budget: int, rng: np.random.Generator,
           max_sentence_tokens: int | None) -> list[int]:
    """Indices of consecutive sentences (cyclic, random start) totalling <= budget tokens."""
    n = len(self.sentences)
    i = int(rng.integers(n)) if self.random_start else 0
    out, used, skipped = [], 0, 0
    while skipped < n:
      c = self.count(tokenizer, i)
      if max_sentence_tokens is not None and c > max_sentence_tokens:
        skipped += 1  # Over-long sentences would loosen the length tolerance.
      elif used + c > budget:
        break
      else:
        out.append(i)
        used, skipped = used + c, 0
      i = (i + 1) % n
    if skipped >= n:
      raise ConfigError(f'no filler sentence has <= max_sentence_tokens={max_sentence_tokens} '
                        f'tokens')
    return out


def gutenberg_filler(*, data_dir: str = '', tar_path: common.PathLike | None = None,
                     cache_dir: common.PathLike | None = None) -> Filler:
  """A `Filler` over the held-out 'filler' Gutenberg books."""
  return Filler.from_books(read_gutenberg('filler', data_dir=data_dir, tar_path=tar_path,
                                          cache_dir=cache_dir).values())


# ----------------------------------------------------------------------------
# bAbI.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BabiSample:
  """One bAbI question: the story's facts before it (order kept), its answer and support.

  `support` indexes `facts` (bAbI's supporting line ids, in the file's order).
  """
  task: str
  facts: tuple[str, ...]
  question: str
  answer: str
  support: tuple[int, ...]


# BABILong's label sets (booydar/babilong metrics.TASK_LABELS) for the location/object tasks.
BABILONG_LABELS = {
    'qa1': ('bathroom', 'bedroom', 'garden', 'hallway', 'kitchen', 'office'),
    'qa2': ('bathroom', 'bedroom', 'garden', 'hallway', 'kitchen', 'office'),
    'qa3': ('bathroom', 'bedroom', 'garden', 'hallway', 'kitchen', 'office'),
    'qa4': ('bathroom', 'bedroom', 'garden', 'hallway', 'kitchen', 'office'),
    'qa5': ('Bill', 'Fred', 'Jeff', 'Mary', 'apple', 'football', 'milk'),
}


def _task_name(task: int | str) -> str:
  name = f'qa{task}' if isinstance(task, int) else str(task)
  if not re.fullmatch(r'qa([1-9]|1[0-9]|20)', name):
    raise ConfigError(f'bAbI task must be 1..20 or qa1..qa20, got {task!r}')
  return name


def parse_babi(text: str, task: int | str = 'qa1', source: str = '<text>') -> list[BabiSample]:
  """Parses bAbI's `id text` / `id question\\tanswer\\tsupport ids` lines into samples."""
  task = _task_name(task)
  samples: list[BabiSample] = []
  facts: list[str] = []
  line_to_fact: dict[int, int] = {}
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    head, _, rest = line.partition(' ')
    if not head.isdigit() or not rest:
      raise DataError(f'{source}:{lineno}: expected "<line id> <text>", got {line[:60]!r}')
    line_id = int(head)
    if line_id == 1:  # Ids restart at 1 with each new story.
      facts, line_to_fact = [], {}
    parts = rest.split('\t')
    if len(parts) == 1:
      line_to_fact[line_id] = len(facts)
      facts.append(rest.strip())
      continue
    if len(parts) < 3 or not parts[1].strip():
      raise DataError(f'{source}:{lineno}: a question line needs question\\tanswer\\tsupport ids')
    try:
      support = tuple(line_to_fact[int(x)] for x in parts[2].split())
    except (ValueError, KeyError) as e:
      raise DataError(f'{source}:{lineno}: bad supporting fact ids {parts[2]!r}') from e
    samples.append(BabiSample(task, tuple(facts), parts[0].strip(), parts[1].strip(), support))
  if not samples:
    raise DataError(f'{source}: no bAbI questions found')
  return samples


def read_babi(task: int | str = 1, split: str = 'test', *, variant: str = 'en',
              data_dir: str = '', tar_path: common.PathLike | None = None) -> list[BabiSample]:
  """Samples of bAbI task `task` ('qa1' or 1 ...), split 'train'/'test', variant 'en'/'en-10k'."""
  task = _task_name(task)
  if split not in ('train', 'test'):
    raise ConfigError(f"bAbI split must be 'train' or 'test', got {split!r}")
  path = pathlib.Path(tar_path) if tar_path else common.resolve_path(BABI_TAR, data_dir)
  if not path.is_file():
    raise DataError(f'bAbI archive not found: {path} (expected {BABI_TAR} in the data dir)')
  pattern = re.compile(rf'(?:^|/){re.escape(variant)}/{task}_[^/]*_{split}\.txt$')
  try:
    with tarfile.open(path, 'r:*') as tf:
      members = [m for m in tf.getmembers() if m.isfile() and pattern.search(m.name)]
      if not members:
        raise DataError(f'bAbI {variant} {task} {split} file not in {path}')
      text = tf.extractfile(members[0]).read().decode('utf-8')
  except (tarfile.TarError, *common._DECODE_ERRORS) as e:  # pylint: disable=protected-access
    raise DataError(f'cannot read {path}: {common.one_line(e)}') from e
  return parse_babi(text, task, source=f'{path.name}:{members[0].name}')


def babi_labels(samples: Iterable[BabiSample]) -> tuple[str, ...]:
  """The task's label set: every answer seen in `samples`, sorted (qa1/qa2: the 6 locations)."""
  return tuple(sorted({s.answer for s in samples}))


# ----------------------------------------------------------------------------
# Long-context records.
# ----------------------------------------------------------------------------

BABILONG_TEMPLATE = '{context}\n\nQuestion: {question}\nAnswer:'
# Mohtashami & Jaggi (2023), "Landmark Attention", passkey retrieval.
PASSKEY_TEMPLATE = ('There is an important info hidden inside a lot of irrelevant text. Find it '
                    'and memorize it. I will quiz you about the important information there.\n\n'
                    '{context}\n\nWhat is the pass key? The pass key is')
PASSKEY_GARBAGE = ('The grass is green.', 'The sky is blue.', 'The sun is yellow.', 'Here we go.',
                   'There and back again.')
PASSKEY_NEEDLE = 'The pass key is {passkey}. Remember it. {passkey} is the pass key.'


def length_ladder(base: int, multipliers: Sequence[int] = (1, 2, 4, 8, 16)) -> list[int]:
  """Context lengths `base * m` (the 1x..16x evaluation ladder)."""
  if base < 1:
    raise ConfigError(f'base length must be positive, got {base}')
  return [base * int(m) for m in multipliers]


def _check_depth(depth: float | None) -> None:
  if depth is not None and not 0.0 <= depth <= 1.0:
    raise ConfigError(f'depth must be in [0, 1] or None, got {depth}')


def _boundaries(counts: list[int], fractions: list[float], depth: float | None,
                spread: float) -> list[int]:
  """Sentence boundaries (0..len(counts)) for each needle, non-decreasing (order kept).

  `fractions` are the record's uniform draws, reused when the filler is trimmed so
  that trimming moves the needles only slightly.
  """
  cum = np.concatenate([[0], np.cumsum(counts)])
  total = cum[-1]

  def nearest(tokens: float) -> int:
    return int(np.argmin(np.abs(cum - tokens)))

  if depth is None:
    return sorted(nearest(u * total) for u in fractions)
  first = nearest(depth * total)
  rest_span = spread * (total - cum[first])
  return [first] + sorted(nearest(cum[first] + u * rest_span) for u in fractions[1:])


def _hide(tokenizer: Encoder, *, template: str, question: str, needles: Sequence[str],
          filler: Filler, length: int, rng: np.random.Generator, depth: float | None,
          spread: float, max_sentence_tokens: int | None) -> dict[str, Any]:
  """`template` filled with filler sentences and `needles` at sentence boundaries.

  Returns the input, its token length, each needle's token position and the
  context's token span.
  """
  if template.count('{context}') != 1:
    raise ConfigError('the prompt template needs exactly one {context}')
  pre, post = template.split('{context}')
  pre, post = pre.format(question=question), post.format(question=question)
  fixed = _ntok(tokenizer, pre + post) + sum(_marginal(tokenizer, s) for s in needles)
  if fixed > length:
    raise ConfigError(f'length {length} is shorter than the prompt and facts ({fixed} tokens)')
  fractions = [float(u) for u in rng.random(len(needles))]
  taken = filler.take(tokenizer, length - fixed, rng, max_sentence_tokens)
  while True:
    sentences = [filler.sentences[i] for i in taken]
    at = _boundaries([filler.count(tokenizer, i) for i in taken], fractions, depth, spread)
    pieces: list[tuple[str, bool]] = []
    k = 0
    for b in range(len(sentences) + 1):
      while k < len(needles) and at[k] == b:
        pieces.append((needles[k], True))
        k += 1
      if b < len(sentences):
        pieces.append((sentences[b], False))
    context, starts = '', []
    for text, is_needle in pieces:
      context += (' ' if context else '')
      if is_needle:
        starts.append(len(pre) + len(context))
      context += text
    prompt = pre + context + post
    n = _ntok(tokenizer, prompt)
    # Tokenisation is not additive over sentences (merges at the joins): trim and retry.
    if n <= length or not taken:
      break
    taken = taken[:-1]
  if n > length:
    raise ConfigError(f'cannot fit the prompt into {length} tokens ({n} without filler)')
  return {
      'input': prompt,
      'length': n,
      'fact_tokens': [_token_at(tokenizer, prompt, c) for c in starts],
      'context_tokens': [_token_at(tokenizer, prompt, len(pre)), _ntok(tokenizer, pre + context)],
  }


def _rng(seed: int, index: int, length: int) -> np.random.Generator:
  # Independent of depth: a depth sweep moves the facts within the same filler.
  return np.random.default_rng([int(seed), int(index), int(length)])


def babilong_record(sample: BabiSample, tokenizer: Encoder, length: int, filler: Filler, *,
                    seed: int = 0, index: int = 0, depth: float | None = None,
                    spread: float = 0.0, template: str = BABILONG_TEMPLATE,
                    max_sentence_tokens: int | None = 100) -> dict[str, Any]:
  """One BABILong-style record: `sample`'s facts hidden in filler, then its question.

  depth=None scatters the facts uniformly (BABILong); depth=d puts the first fact
  at depth d and the others within the next `spread` fraction of the remaining
  filler (spread=0: one contiguous block).
  """
  _check_depth(depth)
  if not 0.0 <= spread <= 1.0:
    raise ConfigError(f'spread must be in [0, 1], got {spread}')
  hidden = _hide(tokenizer, template=template, question=sample.question, needles=sample.facts,
                 filler=filler, length=length, rng=_rng(seed, index, length), depth=depth,
                 spread=spread, max_sentence_tokens=max_sentence_tokens)
  return {'index': index, 'input': hidden['input'], 'outputs': [sample.answer], 'depth': depth,
          'length': hidden['length'], 'task': sample.task, 'target_length': length,
          'question': sample.question, 'support': list(sample.support),
          'fact_tokens': hidden['fact_tokens'], 'context_tokens': hidden['context_tokens']}


def babilong_dataset(samples: Sequence[BabiSample], tokenizer: Encoder, filler: Filler, *,
                     lengths: Sequence[int], depths: Sequence[float | None] = (None,),
                     num_samples: int = 100, seed: int = 0, **kwargs) -> list[dict[str, Any]]:
  """Records for every (length, depth) and the first `num_samples` samples.

  The same bAbI sample and filler start are used across depths (for a given
  length), so depth curves compare like with like. kwargs go to `babilong_record`.
  """
  if not samples:
    raise DataError('no bAbI samples given')
  records = []
  for length in lengths:
    for depth in depths:
      for i in range(min(num_samples, len(samples))):
        records.append(babilong_record(samples[i], tokenizer, length, filler, seed=seed,
                                       index=i, depth=depth, **kwargs))
  return records


def passkey_record(tokenizer: Encoder, length: int, *, depth: float = 0.5, seed: int = 0,
                   index: int = 0, filler: Filler | None = None, digits: int = 5,
                   template: str = PASSKEY_TEMPLATE,
                   max_sentence_tokens: int | None = 100) -> dict[str, Any]:
  """A passkey-retrieval record: a `digits`-digit key at `depth` in repeated (or book) filler."""
  _check_depth(depth)
  if depth is None:
    raise ConfigError('passkey depth must be a number in [0, 1]')
  if not 1 <= digits <= 18:
    raise ConfigError(f'passkey digits must be in 1..18, got {digits}')
  rng = _rng(seed, index, length)
  passkey = int(rng.integers(10 ** (digits - 1), 10 ** digits))
  hidden = _hide(tokenizer, template=template, question='',
                 needles=[PASSKEY_NEEDLE.format(passkey=passkey)],
                 filler=filler or Filler.repeat(PASSKEY_GARBAGE), length=length, rng=rng,
                 depth=depth, spread=0.0, max_sentence_tokens=max_sentence_tokens)
  return {'index': index, 'input': hidden['input'], 'outputs': [str(passkey)], 'depth': depth,
          'length': hidden['length'], 'task': 'passkey', 'target_length': length,
          'fact_tokens': hidden['fact_tokens'], 'context_tokens': hidden['context_tokens']}


def passkey_dataset(tokenizer: Encoder, *, lengths: Sequence[int],
                    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), num_samples: int = 10,
                    seed: int = 0, **kwargs) -> list[dict[str, Any]]:
  """Passkey records for every (length, depth, sample index); kwargs go to `passkey_record`."""
  return [passkey_record(tokenizer, length, depth=d, seed=seed, index=i, **kwargs)
          for length in lengths for d in depths for i in range(num_samples)]


# ----------------------------------------------------------------------------
# {index, input, outputs} JSONL.
# ----------------------------------------------------------------------------


def read_qa_jsonl(path: common.PathLike) -> list[dict[str, Any]]:
  """Records of a `{index, input, outputs}` JSONL file (SeqPE squad_qa / RULER format).

  Blank lines are skipped; `index` defaults to the record's position. Any other
  fields are kept. A malformed line is a one-line DataError naming file and line.
  """
  path = pathlib.Path(path)
  # split('\n'), not splitlines(): JSON strings may hold raw U+2028 and friends.
  lines = ''.join(common.iter_text_chunks(path)).split('\n')
  out = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f'{path}:{lineno}'
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f'{where}: not valid JSON ({e.msg} at column {e.colno})') from e
    if not isinstance(rec, dict):
      raise DataError(f'{where}: expected a JSON object, got {type(rec).__name__}')
    if not isinstance(rec.get('input'), str):
      raise DataError(f'{where}: "input" must be a string')
    outputs = rec.get('outputs')
    if isinstance(outputs, str):
      outputs = [outputs]
    if (not isinstance(outputs, list) or not outputs
        or not all(isinstance(o, str) for o in outputs)):
      raise DataError(f'{where}: "outputs" must be a non-empty list of strings')
    index = rec.get('index', len(out))
    if isinstance(index, bool) or not isinstance(index, (int, str)):
      raise DataError(f'{where}: "index" must be an integer or string')
    out.append({**rec, 'index': index, 'outputs': outputs})
  if not out:
    raise DataError(f'{path}: no records')
  return out


def write_qa_jsonl(path: common.PathLike, records: Iterable[dict[str, Any]]) -> None:
  """Writes records as JSONL atomically (one object per line, UTF-8, no ASCII escaping)."""
  data = ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records)
  common.atomic_write_bytes(path, data.encode('utf-8'))
