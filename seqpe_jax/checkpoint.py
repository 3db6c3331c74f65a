"""orbax checkpoints of the train state and the grain iterator, with safe resume.

* `<workdir>/checkpoints/<step>/{state,data}`: orbax writes each checkpoint
  into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a kill -9
  at any moment leaves the previous complete checkpoint intact; leftovers are
  removed at start-up (before anything else touches the directory).
* Saves are asynchronous (the device → host copy is synchronous, the write is
  not), every `checkpoint_every` steps and on preemption; the last N are kept.
  A failed write (disk full, I/O error) raises `CheckpointWriteError`.
* Each checkpoint carries `seqpe_manifest.json` (size and CRC-32 of every file),
  written inside the temporary directory just before the atomic rename. Resume
  verifies it first, so truncated or bit-flipped files are caught without
  handing them to orbax.
* Resume takes the newest checkpoint that verifies and restores; newer broken
  ones are reported in one line each and moved to `<workdir>/corrupt_checkpoints/`
  (so the step can be written again). If none restores, `CheckpointError`:
  nothing is moved and nothing is trained from scratch behind the user's back.
* `<workdir>/config.json` records the config; resuming with an incompatible
  model / PE / data config is refused instead of silently reusing weights.
* Restoring takes the target's shardings, so a checkpoint saved on one mesh
  restores onto any other mesh or device count.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
import zlib
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from seqpe_jax.data import common as data_common
from seqpe_jax.errors import CheckpointError, CheckpointWriteError, one_line

# Config fields that must match to resume (others, e.g. steps or LR, may change).
STRUCTURAL = ('task', 'model', 'pe', 'train.seq_len', 'train.image_size', 'data.tokenizer',
              'data.vocab_size', 'data.name', 'data.bpe_vocab', 'data.bpe_merges')
# Inside STRUCTURAL, fields that choose how the same function is computed (no parameter and
# no result depends on them): a run may resume with another value, or from before they existed.
LAYOUT_ONLY = ('pe.seqpe.scalar_form', 'pe.seqpe.share_prefixes')
MANIFEST = 'seqpe_manifest.json'
TMP_SUFFIX = '.orbax-checkpoint-tmp'
CORRUPT_DIR = 'corrupt_checkpoints'


# ---------------------------------------------------------------------------- integrity

def _digest(path: pathlib.Path) -> tuple[int, int]:
  crc, size = 0, 0
  with path.open('rb') as f:
    while chunk := f.read(1 << 22):
      crc, size = zlib.crc32(chunk, crc), size + len(chunk)
  return size, crc


def write_manifest(step_dir: str | pathlib.Path) -> None:
  """Records size and CRC-32 of every file of the items (`state/`, `data/`), atomically.

  Top-level files are orbax's bookkeeping, rewritten when the checkpoint commits.
  """
  root = pathlib.Path(step_dir)
  files = {str(p.relative_to(root)): list(_digest(p))
           for item in sorted(root.iterdir()) if item.is_dir()
           for p in sorted(item.rglob('*')) if p.is_file()}
  tmp = root / f'.{MANIFEST}.tmp'
  tmp.write_text(json.dumps({'version': 1, 'files': files}, indent=1))
  os.replace(tmp, root / MANIFEST)


def verify_manifest(step_dir: str | pathlib.Path) -> str | None:
  """None if the files match the manifest (or there is none); else what is wrong."""
  root = pathlib.Path(step_dir)
  path = root / MANIFEST
  if not path.exists():
    return None  # written before manifests existed, or killed between rename and manifest
  try:
    files = json.loads(path.read_text())['files']
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f'unreadable {MANIFEST} ({one_line(e)})'
  for rel, (size, crc) in sorted(files.items()):
    f = root / rel
    try:
      if f.stat().st_size != size:
        return f'{rel} has {f.stat().st_size} bytes, expected {size} (truncated?)'
      if _digest(f)[1] != crc:
        return f'{rel} fails its CRC-32 check (corrupt)'
    except FileNotFoundError:
      return f'{rel} is missing'
    except OSError as e:
      return f'{rel} cannot be read ({one_line(e)})'
  return None


# ---------------------------------------------------------------------------- manager

class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items `state` and `data`."""

  def __init__(self, workdir: str | pathlib.Path, *, every: int, keep: int = 2,
               async_save: bool = True, create: bool = True):
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / 'checkpoints'
    self._async = bool(async_save)
    self._saving: int | None = None
    self._failed = False  # a CheckpointWriteError was raised (report it once)
    save_policy = policies.AnySavePolicy([
        policies.FixedIntervalPolicy(max(int(every), 1)),
        policies.PreemptionCheckpointingPolicy()])
    async_options = ocp.AsyncOptions(post_finalization_callback=self._before_commit)
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy,
        preservation_policy=policies.LatestN(max(int(keep), 1)),
        enable_async_checkpointing=self._async, create=create, cleanup_tmp_directories=True,
        async_options=async_options if self._async else None)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'data'))
    # orbax removes leftover temporary directories in a background thread; wait for it so
    # that it never races with (or outlives) this process.
    await_cleanup = getattr(self.manager, '_maybe_await_cleanup_tmp_directory', None)
    if await_cleanup is not None:
      await_cleanup()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  # ------------------------------------------------------------------ save
  def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
    """Saves if the policy says so (or `force`); returns whether a save started.

    Raises `CheckpointWriteError` if this save, or the previous asynchronous
    one, failed (the last complete checkpoint stays intact).
    """
    if not force and not self.manager.should_save(step):
      return False
    self.wait()  # a failed previous write surfaces here, naming its step
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    self._saving = step
    try:
      started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except  # disk full, permissions, I/O errors
      raise self._write_error(e) from None
    if started and not self._async and jax.process_index() == 0:
      # Synchronous saves have no pre-commit hook: add the manifest to the final directory.
      self._write_manifest_quietly(self.directory / str(step))
    return started

  def _before_commit(self) -> None:
    """orbax's post-finalization hook: runs in the write thread just before the rename."""
    if jax.process_index() != 0 or self._saving is None:
      return
    tmp = sorted(self.directory.glob(f'{self._saving}{TMP_SUFFIX}*'))
    if len(tmp) == 1:
      self._write_manifest_quietly(tmp[0])

  @staticmethod
  def _write_manifest_quietly(step_dir: pathlib.Path) -> None:
    try:
      write_manifest(step_dir)
    except OSError as e:  # the checkpoint itself is complete; it is just unverifiable
      logging.warning('could not write %s in %s: %s', MANIFEST, step_dir, one_line(e))

  def _write_error(self, e: BaseException) -> CheckpointWriteError:
    self._failed = True
    try:
      last = self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      last = None
    return CheckpointWriteError(
        f'writing the checkpoint at step {self._saving} in {self.directory} failed: '
        f'{one_line(e)}; the last complete checkpoint (step {last}) is intact; free space / '
        'fix the disk, then rerun the same command to resume')

  def reached_preemption(self, step: int) -> bool:
    """orbax's multi-host preemption sync point (TPU); False where the service is off."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # no preemption service (single process, CPU, GPU without it)
      return False

  def wait(self) -> None:
    """Blocks until the pending write is committed; `CheckpointWriteError` if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e) from None

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e) from None

  def close_quietly(self) -> None:
    """Waits for and closes everything; a failed write not yet raised is printed."""
    reported = self._failed
    try:
      self.close()
    except CheckpointWriteError as e:
      if not reported:
        print(f'warning: {e}', file=sys.stderr, flush=True)

  # ------------------------------------------------------------------ restore
  def restore(self, abstract_state: Any, data_iter: Any | None,
              step: int | None = None) -> tuple[Any, int] | None:
    """Restores the newest usable checkpoint (or `step`); None if there is none.

    `abstract_state` holds `jax.ShapeDtypeStruct`s with the target shardings.
    Raises `CheckpointError` if checkpoints exist but none can be restored.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    corrupt: list[tuple[int, str]] = []
    misfit: list[tuple[int, str]] = []
    for s in steps:
      problem = verify_manifest(self.directory / str(s))
      if problem is None:
        mismatch = _shape_mismatch(self.directory / str(s) / 'state', abstract_state)
        if mismatch is not None:  # another config's checkpoint: refuse, never move it
          misfit.append((s, mismatch))
          continue
        items = {'state': ocp.args.StandardRestore(abstract_state)}
        # The iterator state is per process; saved with another process count it does not
        # apply, but the data order depends only on (seed, step): seek to the step instead.
        same_topology = (self.directory / str(s) / 'data' /
                         f'process_{jax.process_index()}-of-{jax.process_count()}.json').exists()
        if data_iter is not None and same_topology:
          items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
          restored = self.manager.restore(s, args=ocp.args.Composite(**items))
        except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many types
          problem = f'cannot be restored ({one_line(e, 200)})'
      if problem is not None:
        corrupt.append((s, problem))
        continue
      # An older checkpoint restored with this config, so the newer ones are broken, not
      # incompatible: move them aside (kept for inspection) so their steps can be rewritten.
      for bad, why in corrupt:
        moved = self._quarantine(bad)
        print(f'warning: checkpoint at step {bad} is unusable ({why}); resumed from step {s} '
              f'instead (moved it to {moved})', file=sys.stderr, flush=True)
      if corrupt:
        self.manager.reload()
      if data_iter is not None and not same_topology:
        data_common.seek(data_iter, s)
        if jax.process_index() == 0:
          print(f'note: checkpoint {s} was saved with another process count; data resumes '
                f'at global batch {s} (same order)', flush=True)
      return restored['state'], s
    if misfit and not corrupt:
      s, why = misfit[0]
      raise CheckpointError(
          f'the checkpoint at step {s} in {self.directory} was written by a different model '
          f'config ({why}); use a new --workdir, or rerun with the config it was trained with')
    if corrupt or misfit:
      why = '; '.join(f'step {s}: {p}' for s, p in sorted(corrupt + misfit, reverse=True))
      raise CheckpointError(
          f'no usable checkpoint in {self.directory} ({why}); if the config changed, use a new '
          f'--workdir; to start from scratch, move {self.directory} away')
    return None

  def _quarantine(self, step: int) -> pathlib.Path:
    dest = self.workdir / CORRUPT_DIR / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    if jax.process_index() == 0:
      dest.parent.mkdir(parents=True, exist_ok=True)
      os.replace(self.directory / str(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'seqpe_quarantine_{step}')
    return dest


def _dotted(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='.')


def _shape_mismatch(state_dir: pathlib.Path, abstract_state: Any) -> str | None:
  """How the saved arrays differ from `abstract_state` (from metadata alone), or None.

  Checked before restoring because orbax, asked to restore mismatching shapes,
  fails with pages of asynchronous tracebacks.
  """
  try:
    meta = ocp.StandardCheckpointHandler().metadata(state_dir)
  except Exception:  # pylint: disable=broad-except  # unreadable metadata: restore reports it
    return None
  leaves = lambda tree: {_dotted(p): (tuple(x.shape), str(x.dtype))
                         for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  saved, target = leaves(meta), leaves(abstract_state)
  if sorted(saved.values()) == sorted(target.values()):
    return None
  fmt = lambda v: 'absent' if v is None else f'{v[1]}{list(v[0])}'
  # Parameter paths are spelled alike in both trees (optimizer-state paths may not be), and
  # a field in both with another shape says more than one missing on one side.
  diffs = [n for n in sorted(set(saved) | set(target)) if saved.get(n) != target.get(n)]
  diffs.sort(key=lambda n: (not n.startswith('params.'), n not in saved or n not in target))
  if diffs and (diffs[0].startswith('params.') or (diffs[0] in saved and diffs[0] in target)):
    n = diffs[0]
    return f'{n} is {fmt(saved.get(n))} in the checkpoint, {fmt(target.get(n))} now'
  return f'it holds {len(saved)} arrays, this config has {len(target)}'


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
  """Whether `<workdir>/checkpoints` holds a committed step directory."""
  d = pathlib.Path(workdir) / 'checkpoints'
  return d.is_dir() and any(p.name.isdigit() and p.is_dir() for p in d.iterdir())


# ---------------------------------------------------------------------------- config

def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
  node: Any = cfg
  for part in dotted.split('.'):
    node = node.get(part) if hasattr(node, 'get') else None
    if node is None:
      return None
  return node.to_dict() if hasattr(node, 'to_dict') else node


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x, default=str))


def check_compatible(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                     has_checkpoint: bool) -> None:
  """Refuses a workdir whose checkpoints came from a structurally different config."""
  path = pathlib.Path(workdir) / 'config.json'
  if not has_checkpoint or not path.exists():
    return
  try:
    saved = ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, ValueError, TypeError) as e:
    raise CheckpointError(f'{path} is unreadable ({one_line(e)}); use a new --workdir') from None
  for key in STRUCTURAL:
    diff = _first_diff(_jsonable(_get(saved, key)), _jsonable(_get(config, key)), key)
    if diff is not None:
      raise CheckpointError(
          f'workdir {workdir} holds a checkpoint from an incompatible config ({diff} differs: '
          f'saved {_get(saved, diff)!r}, now {_get(config, diff)!r}); use a new --workdir')


def _first_diff(old: Any, new: Any, key: str) -> str | None:
  """The dotted path of the first (deepest) differing field, or None if equal."""
  if old == new or key in LAYOUT_ONLY:
    return None
  if old is None and new is not None and not isinstance(new, dict) and not new:
    return None  # a field added to the configs after that run, here at its 'off' value
  if isinstance(old, dict) and isinstance(new, dict):
    for k in sorted(set(old) | set(new)):
      if old.get(k) != new.get(k):
        return _first_diff(old.get(k), new.get(k), f'{key}.{k}')
  return key


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Records the run's config (process 0) for compatibility checks and provenance."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / 'config.json'
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(_jsonable(config.to_dict()), indent=2, sort_keys=True))
  tmp.replace(path)


# ---------------------------------------------------------------------------- best model

BEST_DIR = 'best'


class BestCheckpoint:
  """The parameters with the best validation score so far, in `<workdir>/best/<step>/`.

  The official trainers select their model by validation (perplexity at the training
  length, top-1 at the training resolution); this keeps that model next to the rolling
  checkpoints. orbax's `best_fn` keeps one step — the lowest score — and remembers the scores
  of what it kept, so a resumed run keeps comparing against the right best. Saves are
  synchronous (rare, and a half-written best must never replace a complete one).
  """

  def __init__(self, workdir: str | pathlib.Path, *, create: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / BEST_DIR
    if not create and not self.directory.is_dir():
      raise CheckpointError(f'no best checkpoint in {self.directory}; train with '
                            'train.eval_every > 0 and train.keep_best=True first')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m['score'], best_mode='min',
        enable_async_checkpointing=False, create=create, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('params',))

  def best(self) -> tuple[int, float] | None:
    """`(step, score)` of the kept model, or None."""
    step = self.manager.best_step()
    if step is None:
      return None
    metrics = self.manager.metrics(step) or {}
    return step, float(metrics.get('score', float('inf')))

  def update(self, step: int, params: Any, score: float) -> bool:
    """Saves `params` if `score` beats the kept one; returns whether it did."""
    current = self.best()
    if current is not None and not score < current[1]:
      return False
    if step in self.manager.all_steps():  # a rerun of an already-evaluated step
      return False
    try:
      self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                        metrics={'score': float(score)}, force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointWriteError(f'writing the best checkpoint at step {step} in '
                                 f'{self.directory} failed: {one_line(e)}') from None
    return True

  def restore(self, abstract_params: Any) -> tuple[Any, int]:
    best = self.best()
    if best is None:
      raise CheckpointError(f'no best checkpoint in {self.directory}; train with '
                            'train.eval_every > 0 and train.keep_best=True first')
    out = self.manager.restore(best[0], args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return out['params'], best[0]

  def close(self) -> None:
    self.manager.close()


# ---------------------------------------------------------------------------- init_from

# What a fine-tuned run must share with the run it starts from (`config.init_from`).
INIT_FROM_FIELDS = ('task', 'model', 'pe', 'data.tokenizer', 'data.vocab_size',
                    'data.bpe_vocab', 'data.bpe_merges')


def check_init_from(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """One-line `CheckpointError` unless `workdir` holds a checkpoint of a compatible model."""
  root, where = pathlib.Path(workdir), f'config.init_from={workdir}'
  if not has_checkpoint(root):
    raise CheckpointError(f'{where}: no checkpoint in {root / "checkpoints"}')
  try:
    saved = ml_collections.ConfigDict(json.loads((root / 'config.json').read_text()))
  except (OSError, ValueError, TypeError) as e:
    raise CheckpointError(f'{where}: cannot read its config.json ({one_line(e)})') from None
  for key in INIT_FROM_FIELDS:
    diff = _first_diff(_jsonable(_get(saved, key)), _jsonable(_get(config, key)), key)
    if diff is not None:
      raise CheckpointError(f'{where} was trained with another {diff} (saved '
                            f'{_get(saved, diff)!r}, now {_get(config, diff)!r})')


def restore_params_from(workdir: str | pathlib.Path, abstract_params: Any,
                        config: ml_collections.ConfigDict) -> tuple[Any, int]:
  """The params (only) of the newest usable checkpoint of another run (`config.init_from`).

  For fine-tuning a trained model (e.g. long-context QA on a pretrained LM): model and
  position encoding must match (`check_init_from`); the optimizer state, data position and
  training length are this run's own. Returns `(params, step)`.
  """
  check_init_from(workdir, config)
  root, where = pathlib.Path(workdir), f'config.init_from={workdir}'
  steps = sorted((int(p.name) for p in (root / 'checkpoints').iterdir()
                  if p.name.isdigit() and p.is_dir()), reverse=True)
  item = {'params': abstract_params}
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
      item)
  problems = []
  for s in steps:
    step_dir = root / 'checkpoints' / str(s)
    problem = verify_manifest(step_dir)
    if problem is None:
      try:  # only the params subtree of the saved train state
        out = ocp.PyTreeCheckpointer().restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
        return out['params'], s
      except Exception as e:  # pylint: disable=broad-except  # shapes or files: try older
        problem = f'cannot be restored ({one_line(e, 200)})'
    problems.append(f'step {s}: {problem}')
  raise CheckpointError(f'{where}: no usable checkpoint ({"; ".join(problems)})')
