"""Tokenizers for language modelling: UTF-8 bytes, or SentencePiece trained on the train split.

Both are picklable (grain workers hold them) and share `name`, `vocab_size`,
`encode(str) -> int32 ids` and `decode(ids) -> str`; SentencePiece models are
cached in the cache dir, keyed by the training files' fingerprint.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Sequence

import ml_collections
import numpy as np
import sentencepiece as spm

from seqpe_jax.data import common
from seqpe_jax.errors import ConfigError, DataError



class ByteTokenizer:
  """UTF-8 bytes as tokens (vocab 256): no training, any text, exact roundtrip."""

  name = 'bytes'
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return np.asarray(ids, np.uint8).tobytes().decode('utf-8', errors='replace')


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

  def __getstate__(self):
    return {**self.__dict__, '_sp': None}

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


# Both share `name`, `vocab_size`, `encode(str) -> int32 ids` and `decode(ids) -> str`.
Tokenizer = ByteTokenizer | SentencePieceTokenizer


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
  raise ConfigError(f"config.data.tokenizer must be 'sentencepiece' or 'bytes', got {kind!r}")
