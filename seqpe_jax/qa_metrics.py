"""Host-side scoring for long-context evaluation: QA exact match, passkey, BABILong, BPC.

* `exact_match`: the rule of the official SeqPE QA code: a prediction is correct
  if ANY reference, lower-cased and stripped, is a substring of the lower-cased,
  stripped generation; the mean is reported x100.
* `passkey_correct`: the first integer in the generation equals the passkey.
* `babilong_compare`: BABILong's `compare_answers` (booydar/babilong metrics.py):
  the target must be the ONLY task label mentioned in the first sentence of the
  output, ignoring labels that also occur in the question.
  `first_label_match` is the looser rule: the first output word that is a label.
* `bits_per_char` / `bits_per_byte`: summed token NLL (nats) / (ln 2 * units).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import numpy as np

from seqpe_jax.errors import ConfigError

# ----------------------------------------------------------------------------
# Exact match (substring, any reference).
# ----------------------------------------------------------------------------


def _normalize(text: str) -> str:
  return text.strip().lower()


def string_match_any(prediction: str, references: str | Sequence[str]) -> bool:
  """True if any normalised reference is a substring of the normalised prediction."""
  if isinstance(references, str):
    references = [references]
  pred = _normalize(prediction)
  return any(_normalize(r) in pred for r in references)


def _check_pairs(predictions: Sequence[Any], targets: Sequence[Any], what: str) -> None:
  if len(predictions) != len(targets):
    raise ConfigError(f'{what}: {len(predictions)} predictions for {len(targets)} references')
  if not predictions:
    raise ConfigError(f'{what}: nothing to score')


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
  """Official QA EM: % of predictions that contain any of their references (see module doc)."""
  _check_pairs(predictions, references, 'exact_match')
  return 100.0 * float(np.mean([string_match_any(p, r) for p, r in zip(predictions, references)]))


# ----------------------------------------------------------------------------
# Passkey.
# ----------------------------------------------------------------------------

_INT = re.compile(r'\d+')


def first_integer(text: str) -> int | None:
  """The first run of digits in `text` as an int (None if there is none)."""
  m = _INT.search(text)
  return int(m.group()) if m else None


def passkey_correct(prediction: str, passkey: int | str) -> bool:
  """True iff the first integer in the generation equals the passkey."""
  got = first_integer(prediction)
  return got is not None and got == int(passkey)


def passkey_accuracy(predictions: Sequence[str], passkeys: Sequence[int | str]) -> float:
  """% of generations whose first integer is the passkey."""
  _check_pairs(predictions, passkeys, 'passkey_accuracy')
  return 100.0 * float(np.mean([passkey_correct(p, k) for p, k in zip(predictions, passkeys)]))


def passkey_chance(digits: int = 5) -> float:
  """Chance of guessing a uniform `digits`-digit key (no leading zero): ~0."""
  return 1.0 / (9 * 10 ** (digits - 1))


# ----------------------------------------------------------------------------
# BABILong label matching.
# ----------------------------------------------------------------------------


def _babilong_preprocess(output: str) -> str:
  # As BABILong: lower-case, keep the first sentence, cut where the model starts
  # inventing new examples. Their 'Question' split runs after lower-casing, so it
  # never fires; kept (as a no-op) to reproduce their numbers exactly.
  output = output.lower().split('.')[0]
  output = output.split('<context>')[0].split('<example>')[0]
  return output.split('Question')[0]


def babilong_compare(target: str, output: str, question: str, labels: Iterable[str]) -> bool:
  """BABILong's `compare_answers`: the target is the only label in the output's first sentence.

  Labels are matched as lower-case substrings; labels that occur in the question
  are ignored (they are never the answer, e.g. qa5 names).
  """
  output = _babilong_preprocess(output)
  labels = {x.lower() for x in labels}
  in_question = {x for x in labels if x in question.lower()}
  in_output = {x for x in labels if x in output} - in_question
  return in_output == {target.lower()}


_WORD_STRIP = '.,;:!?"\'()[]{}<>\u201c\u201d\u2018\u2019'


def first_label(output: str, labels: Iterable[str]) -> str | None:
  """The first whitespace-separated word of `output` (punctuation stripped) that is a label."""
  labels = {x.lower() for x in labels}
  for word in output.lower().split():
    word = word.strip(_WORD_STRIP)
    if word in labels:
      return word
  return None


def first_label_match(target: str, output: str, labels: Iterable[str]) -> bool:
  """True iff the first label word in `output` is `target` (case-insensitive)."""
  return first_label(output, labels) == target.lower()


def label_match_accuracy(predictions: Sequence[str], targets: Sequence[str],
                         labels: Iterable[str], questions: Sequence[str] | None = None,
                         rule: str = 'babilong') -> float:
  """% correct under `rule` 'babilong' (`babilong_compare`, needs questions) or 'first'."""
  _check_pairs(predictions, targets, 'label_match_accuracy')
  labels = tuple(labels)
  if rule == 'babilong':
    questions = questions if questions is not None else [''] * len(targets)
    _check_pairs(predictions, questions, 'label_match_accuracy questions')
    hits = [babilong_compare(t, p, q, labels) for p, t, q in zip(predictions, targets, questions)]
  elif rule == 'first':
    hits = [first_label_match(t, p, labels) for p, t in zip(predictions, targets)]
  else:
    raise ConfigError(f"label match rule must be 'babilong' or 'first', got {rule!r}")
  return 100.0 * float(np.mean(hits))


def label_chance(labels: Iterable[str], question: str = '') -> float:
  """Chance of a uniform guess among the labels not named in the question (qa1/qa2: 1/6)."""
  labels = {x.lower() for x in labels}
  labels -= {x for x in labels if x in question.lower()}
  if not labels:
    raise ConfigError('label set is empty')
  return 1.0 / len(labels)


# ----------------------------------------------------------------------------
# Scoring generated records.
# ----------------------------------------------------------------------------


def score_record(record: dict[str, Any], prediction: str,
                 labels: Iterable[str] | None = None) -> bool:
  """Scores one generated record by its task: passkey, BABILong label match (given
  `labels`) or exact match."""
  if record.get('task') == 'passkey':
    return passkey_correct(prediction, record['outputs'][0])
  if labels is not None:
    return babilong_compare(record['outputs'][0], prediction, record.get('question', ''), labels)
  return string_match_any(prediction, record['outputs'])


def score_records(records: Sequence[dict[str, Any]], predictions: Sequence[str],
                  labels: dict[str, Iterable[str]] | None = None) -> dict[str, Any]:
  """Accuracy (%) overall and per (task, target_length, depth) of generated records.

  `labels` maps a task ('qa1') to its label set; tasks without one use exact match.
  """
  _check_pairs(predictions, records, 'score_records')
  labels = labels or {}
  hits = [score_record(r, p, labels.get(r.get('task'))) for r, p in zip(records, predictions)]
  groups: dict[tuple, list[bool]] = {}
  for r, h in zip(records, hits):
    key = (r.get('task'), r.get('target_length', r.get('length')), r.get('depth'))
    groups.setdefault(key, []).append(h)
  return {
      'accuracy': 100.0 * float(np.mean(hits)),
      'count': len(hits),
      'groups': [{'task': k[0], 'length': k[1], 'depth': k[2], 'count': len(v),
                  'accuracy': 100.0 * float(np.mean(v))} for k, v in groups.items()],
      'correct': hits,
  }


# ----------------------------------------------------------------------------
# Bits per character / byte.
# ----------------------------------------------------------------------------


def bits_per_unit(total_nll: float, units: int) -> float:
  """Summed NLL in nats over `units` characters/bytes -> bits per unit."""
  if units <= 0:
    raise ConfigError(f'need a positive number of characters/bytes, got {units}')
  return float(total_nll) / (math.log(2) * units)


def bits_per_char(total_nll: float, text_or_chars: str | int) -> float:
  """bpc = total_nll / (ln 2 * number of Unicode characters)."""
  n = len(text_or_chars) if isinstance(text_or_chars, str) else int(text_or_chars)
  return bits_per_unit(total_nll, n)


def bits_per_byte(total_nll: float, text_or_bytes: str | int) -> float:
  """bpb = total_nll / (ln 2 * number of UTF-8 bytes)."""
  n = (len(text_or_bytes.encode('utf-8')) if isinstance(text_or_bytes, str)
       else int(text_or_bytes))
  return bits_per_unit(total_nll, n)


def book_windows(tokens: Sequence[int] | np.ndarray, window: int, *,
                 drop_last: bool = False) -> list[np.ndarray]:
  """Non-overlapping windows for scoring a long document: each holds `window + 1` tokens.

  Window k is `tokens[k*window : (k+1)*window + 1]` (inputs = w[:-1], targets =
  w[1:]), so consecutive windows share one boundary token and every token after
  the first is a target exactly once; the last window may be shorter, or is
  dropped with `drop_last` (then only `scored_targets(...)` tokens are scored).
  """
  if window < 1:
    raise ConfigError(f'window must be positive, got {window}')
  tokens = np.asarray(tokens, np.int32)
  out = [tokens[i:i + window + 1] for i in range(0, max(len(tokens) - 1, 0), window)]
  if drop_last and out and len(out[-1]) < window + 1:
    out = out[:-1]
  return out


def scored_targets(windows: Sequence[np.ndarray]) -> int:
  """How many target tokens `book_windows` windows score (tokens[1 : 1 + n])."""
  return sum(max(len(w) - 1, 0) for w in windows)


def scored_units(tokenizer: Any, tokens: Sequence[int] | np.ndarray,
                 num_targets: int) -> tuple[int, int]:
  """(characters, UTF-8 bytes) of the text of targets tokens[1 : 1 + num_targets].

  Measured as decode(tokens[:1 + n]) minus decode(tokens[:1]), since a token in
  isolation may decode differently (SentencePiece's leading-space handling);
  exact for ByteTokenizer unless the first token splits a multi-byte character.
  """
  tokens = np.asarray(tokens)
  full = tokenizer.decode(tokens[:1 + num_targets])
  head = tokenizer.decode(tokens[:1])
  text = full[len(head):] if full.startswith(head) else full
  return len(text), len(text.encode('utf-8'))
