"""orbax checkpoints of the train state and the grain iterator, with safe resume.

* `<workdir>/checkpoints/<step>/{state,data}`: orbax writes each checkpoint
  into a temporary directory and renames it when complete, so a kill -9 at any
  moment leaves the previous complete checkpoint intact; leftovers are cleaned
  at start-up.
* Saves are asynchronous (the device → host copy is synchronous, the write is
  not), every `checkpoint_every` steps and on preemption; the last N are kept.
* Resume takes the newest checkpoint that restores; an unreadable one is
  reported in one line and the previous one is used.
* `<workdir>/config.json` records the config; resuming with an incompatible
  model / PE / data config is refused instead of silently reusing weights.
* Restoring takes the target's shardings, so a checkpoint saved on one mesh
  restores onto any other mesh or device count.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from seqpe_jax.errors import CheckpointError

# Config fields that must match to resume (others, e.g. steps or LR, may change).
STRUCTURAL = ('task', 'model', 'pe', 'train.seq_len', 'train.image_size', 'data.tokenizer',
              'data.vocab_size', 'data.name')


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items `state` and `data`."""

  def __init__(self, workdir: str | pathlib.Path, *, every: int, keep: int = 2,
               async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    save_policy = policies.AnySavePolicy([
        policies.FixedIntervalPolicy(max(int(every), 1)),
        policies.PreemptionCheckpointingPolicy()])
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy,
        preservation_policy=policies.LatestN(max(int(keep), 1)),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'data'))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any | None, *, force: bool = False) -> bool:
    """Saves if the policy says so (or `force`); returns whether a save started."""
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def reached_preemption(self, step: int) -> bool:
    """orbax's multi-host preemption sync point (TPU); False where the service is off."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # no preemption service (single process, CPU, GPU without it)
      return False

  def restore(self, abstract_state: Any, data_iter: Any | None,
              step: int | None = None) -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint (or `step`); None if there is none.

    `abstract_state` holds `jax.ShapeDtypeStruct`s with the target shardings.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    for s in steps:
      items = {'state': ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**items))
      except Exception as e:  # truncated / corrupt files: fall back to the previous one
        if step is not None:
          raise CheckpointError(f'checkpoint {self.directory / str(s)} cannot be read '
                                f'({_first_line(e)})') from None
        logging.warning('checkpoint at step %d is unreadable (%s); trying the previous one',
                        s, _first_line(e))
        print(f'warning: checkpoint at step {s} is unreadable ({_first_line(e)}); '
              'using the previous one', flush=True)
        continue
      return restored['state'], s
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


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
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} is unreadable ({_first_line(e)}); use a new --workdir') from None
  for key in STRUCTURAL:
    old, new = _jsonable(_get(saved, key)), _jsonable(_get(config, key))
    if old != new:
      diff = key
      if isinstance(old, dict) and isinstance(new, dict):
        diff = next((f'{key}.{k}' for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)),
                    key)
      raise CheckpointError(
          f'workdir {workdir} holds a checkpoint from an incompatible config ({diff} differs: '
          f'saved {_get(saved, diff)!r}, now {_get(config, diff)!r}); use a new --workdir')


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Records the run's config (process 0) for compatibility checks and provenance."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / 'config.json'
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(_jsonable(config.to_dict()), indent=2, sort_keys=True))
  tmp.replace(path)
