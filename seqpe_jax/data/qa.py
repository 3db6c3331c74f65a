"""Supervised fine-tuning data for long-context QA: prompt → answer, loss on the answer only.

`config.data.sft` turns an LM run into QA fine-tuning (the official `squad_qa` SFT, method
doc §8.2): each example is `prompt + " " + answer + terminator`, the loss weights cover the
answer and the terminator only (the last prompt token predicts the first answer token), and
examples longer than the training length are dropped, as the official data collator does.
Sources, all offline: BABILong-style bAbI facts hidden in held-out Gutenberg filler
(`babilong`), passkey retrieval (`passkey`), or a `{index, input, outputs}` JSONL file
(`jsonl`, RULER / the paper's SQuAD-QA format). The prompts are built at the training length
(the "1x" set); evaluation at 1x..16x lives in `seqpe_jax.longctx_eval`.

Padding is on the right with weight 0 (the official collator pads on the left; with
explicit positions starting at 0 for every example, right padding leaves every scored
token's context and positions exactly as in an unpadded sequence).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from seqpe_jax.data import common, longctx
from seqpe_jax.errors import ConfigError, DataError

SOURCES = ('', 'babilong', 'passkey', 'jsonl')
# Prompt tokens are budgeted so that " answer" + terminator still fits the training length.
ANSWER_BUDGET = 16


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """`config.data.sft`: where the fine-tuning examples come from."""

  source: str = ''               # '' (off: plain LM training) | babilong | passkey | jsonl
  tasks: str = 'qa1,qa2'         # babilong: bAbI tasks (train split, en)
  train_file: str = ''           # jsonl: the training file ({index, input, outputs} lines)
  num_examples: int = 2000       # babilong / passkey: generated examples

  @classmethod
  def from_config(cls, cfg) -> 'SFTConfig':
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f'unknown config.data.sft option(s): {", ".join(unknown)}')
    out = cls(**cfg)
    if out.source not in SOURCES:
      raise ConfigError(f'data.sft.source must be one of {", ".join(map(repr, SOURCES))}, '
                        f'got {out.source!r}')
    if out.source in ('babilong', 'passkey') and out.num_examples < 1:
      raise ConfigError(f'data.sft.num_examples must be positive, got {out.num_examples}')
    if out.source == 'jsonl' and not out.train_file:
      raise ConfigError('data.sft.source=jsonl needs data.sft.train_file')
    return out


def terminator(tokenizer) -> np.ndarray:
  """What ends an answer: the tokenizer's EOS if it has one (GPT-2), else a newline."""
  eos = getattr(tokenizer, 'eos_id', None)
  if eos is not None:
    return np.asarray([eos], np.int32)
  return np.asarray(tokenizer.encode('\n'), np.int32)


def sft_arrays(records: Sequence[dict[str, Any]], tokenizer, seq_len: int
               ) -> tuple[dict[str, np.ndarray], int]:
  """`{'inputs', 'targets' int32, 'weights' f32: [N, seq_len]}` and the number dropped.

  Weights are 1 exactly on the targets that are answer or terminator tokens.
  """
  end = terminator(tokenizer)
  rows, dropped = [], 0
  for r in records:
    prompt = np.asarray(tokenizer.encode(r['input']), np.int32)
    answer = np.concatenate([np.asarray(tokenizer.encode(' ' + str(r['outputs'][0])),
                                        np.int32), end])
    ids = np.concatenate([prompt, answer])
    if len(ids) > seq_len + 1 or not len(prompt):
      dropped += 1
      continue
    rows.append((ids, len(prompt)))
  if not rows:
    raise DataError(f'no fine-tuning example fits the training length {seq_len} '
                    f'({dropped} dropped); raise train.seq_len')
  n = len(rows)
  out = {'inputs': np.zeros((n, seq_len), np.int32), 'targets': np.zeros((n, seq_len), np.int32),
         'weights': np.zeros((n, seq_len), np.float32)}
  for i, (ids, p) in enumerate(rows):
    k = len(ids) - 1
    out['inputs'][i, :k] = ids[:-1]
    out['targets'][i, :k] = ids[1:]
    out['weights'][i, p - 1:k] = 1.0  # target t is ids[t+1]: answer tokens start at t = p-1
  return out, dropped


def sft_records(cfg: SFTConfig, tokenizer, length: int, *, seed: int, data_dir: str = '',
                cache_dir=None) -> list[dict[str, Any]]:
  """The training records (prompts of at most `length - ANSWER_BUDGET` tokens)."""
  prompt_len = length - ANSWER_BUDGET
  if cfg.source == 'jsonl':
    return longctx.read_qa_jsonl(common.resolve_path(cfg.train_file, data_dir))
  if prompt_len < 16:
    raise ConfigError(f'train.seq_len={length} leaves no room for a QA prompt (need > '
                      f'{ANSWER_BUDGET + 16})')
  if cfg.source == 'passkey':
    rng = np.random.default_rng([seed, 1])
    return [longctx.passkey_record(tokenizer, prompt_len, depth=float(rng.uniform()),
                                   seed=seed, index=i) for i in range(cfg.num_examples)]
  filler = longctx.gutenberg_filler(data_dir=data_dir, cache_dir=cache_dir)
  samples = [s for t in cfg.tasks.split(',') if t.strip()
             for s in longctx.read_babi(t.strip(), 'train', data_dir=data_dir)]
  if not samples:
    raise ConfigError(f'data.sft.tasks={cfg.tasks!r} names no bAbI task')
  order = np.random.default_rng([seed, 2]).permutation(len(samples))
  records: list[dict[str, Any]] = []
  unfit: set[int] = set()
  i = 0
  while len(records) < cfg.num_examples and len(unfit) < len(samples):
    j = int(order[i % len(samples)])
    i += 1
    if j in unfit:
      continue
    try:
      records.append(longctx.babilong_record(samples[j], tokenizer, prompt_len, filler,
                                             seed=seed, index=len(records)))
    except ConfigError:  # its facts alone exceed the length: dropped, as the official SFT
      unfit.add(j)
  if not records:
    raise DataError(f'no bAbI {cfg.tasks} story fits a prompt of {prompt_len} tokens; raise '
                    'train.seq_len')
  return records


class _Rows:
  """Random access over the rows of equally long arrays."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self.arrays.items()}


def sft_train_iter(arrays: dict[str, np.ndarray], *, batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1,
                   num_workers: int = 0) -> grain.DatasetIterator:
  """Endless shuffled per-process batches of fine-tuning rows (resumable grain iterator)."""
  ds = grain.MapDataset.source(_Rows(arrays))
  if batch_size * process_count > len(ds):
    raise DataError(f'batch size {batch_size * process_count} exceeds the {len(ds)} '
                    'fine-tuning examples; lower it or raise data.sft.num_examples')
  ds = common.process_batches(ds.shuffle(seed=seed).repeat(), batch_size, process_index,
                              process_count)
  return common.to_iterator(ds, num_workers)


def build_sft_iter(data_cfg: ml_collections.ConfigDict, tokenizer, *, seq_len: int,
                   batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> tuple[grain.DatasetIterator, int]:
  """The fine-tuning iterator of `config.data.sft` and its number of examples."""
  cfg = SFTConfig.from_config(data_cfg.get('sft'))
  records = sft_records(cfg, tokenizer, seq_len, seed=seed, data_dir=data_cfg.get('dir', ''),
                        cache_dir=common.resolve_cache_dir(data_cfg.get('cache_dir', '')))
  arrays, dropped = sft_arrays(records, tokenizer, seq_len)
  if dropped and process_index == 0:
    print(f'note: {dropped} of {len(records)} fine-tuning examples are longer than '
          f'train.seq_len={seq_len} and were dropped (as the official collator)', flush=True)
  it = sft_train_iter(arrays, batch_size=batch_size, seed=seed, process_index=process_index,
                      process_count=process_count, num_workers=data_cfg.get('num_workers', 0))
  return it, len(arrays['inputs'])
