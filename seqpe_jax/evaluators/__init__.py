"""Evaluations as plug-ins (big_vision's evaluator pattern), chosen by name.

An evaluator is a class `@register('<name>')`ed here: `__init__(task, config, data=None)`
validates its `config.eval.*` fields and, given the run's data, pre-reads what it will
evaluate (before anything is written); `run(params, mesh)` returns rows (plain dicts);
`evaluate.write_report` turns them into `<output>.{json,md,png}` from its `table`. Each
task kind names its default evaluations (`Task.default_evaluations`); `config.evals.<name>`
adds one more by name (`{type, every, ...fields}`, see `build_entry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import ml_collections

from seqpe_jax.errors import ConfigError
from seqpe_jax.evaluate import Table

if TYPE_CHECKING:
  from seqpe_jax.tasks import Task

_REGISTRY: dict[str, type['Evaluator']] = {}


class Evaluator:
  """One evaluation of a trained model; subclasses set `output`, `table` and `run`."""

  name: ClassVar[str] = ''      # the registry name
  output: ClassVar[str] = ''    # report files <workdir>/<output>.{json,md,png}
  table: ClassVar[Table]        # how the rows read as a table / plot
  # The fields a `config.evals.<name>` entry may set: None (the built-ins) means the
  # `config.eval.*` keys, which the entry overrides; a tuple means the evaluator's own
  # fields, passed as `spec=` (its constructor then takes `spec`).
  fields: ClassVar[tuple[str, ...] | None] = None
  every: int = 0                # steps between runs during training (0: only at the end)

  def __init__(self, task: Task, config: ml_collections.ConfigDict, data: Any = None,
               spec: ml_collections.ConfigDict | None = None):
    self.task, self.config, self.data = task, config, data
    self.spec = spec if spec is not None else ml_collections.ConfigDict()

  def run(self, params: Any, mesh) -> list[dict]:
    raise NotImplementedError


def register(name: str):
  """Class decorator: makes the evaluator available as `name`."""
  def wrap(cls: type[Evaluator]) -> type[Evaluator]:
    cls.name = name
    cls.output = cls.output or name
    _REGISTRY[name] = cls
    return cls
  return wrap


def get(name: str) -> type[Evaluator]:
  if name not in _REGISTRY:
    raise ConfigError(f'unknown evaluation {name!r}; registered: {", ".join(sorted(_REGISTRY))}')
  return _REGISTRY[name]


def build(task: Task, config: ml_collections.ConfigDict, data: Any = None) -> list[Evaluator]:
  """The task's default evaluations then the `config.evals` entries, validated (and their
  data pre-read when given)."""
  out = [get(name)(task, config, data) for name in task.default_evaluations]
  taken = {ev.output for ev in out}
  for name, entry in (config.get('evals') or {}).items():
    if name in taken:
      raise ConfigError(f'evals.{name}: the name is taken by a default evaluation\'s report')
    out.append(build_entry(task, config, name, entry, data))
  return out


def build_entry(task: Task, config: ml_collections.ConfigDict, name: str, entry: Any,
                data: Any = None) -> Evaluator:
  """The evaluator of `config.evals.<name>`; its reports are `<workdir>/<name>.*`."""
  where = f'evals.{name}'
  if not hasattr(entry, 'items') or 'type' not in entry:
    raise ConfigError(f"{where} must be a dict with a 'type' (one of: "
                      f'{", ".join(sorted(_REGISTRY))})')
  try:
    cls = get(entry['type'])
  except ConfigError as e:
    raise ConfigError(f'{where}.type: {e}') from None
  every = entry.get('every', 0)
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    raise ConfigError(f'{where}.every must be an int >= 0 (0: only at the end), got {every!r}')
  spec = {k: v for k, v in entry.items() if k not in ('type', 'every')}
  allowed = set(config.eval) if cls.fields is None else set(cls.fields)
  unknown = sorted(set(spec) - allowed)
  if unknown:
    raise ConfigError(f'{where}: unknown field {unknown[0]!r} for type {cls.name!r}; known: '
                      f'type, every, {", ".join(sorted(allowed))}')
  if cls.fields is None:
    if spec:  # the entry's fields override config.eval.* for this evaluator only
      config = config.copy_and_resolve_references()
      try:
        with config.unlocked():
          config.eval.update(spec)
      except (TypeError, ValueError) as e:
        raise ConfigError(f'{where}: {" ".join(str(e).split())}') from None
    ev = cls(task, config, data)
    ev.spec = ml_collections.ConfigDict(spec)
  else:
    ev = cls(task, config, data, spec=ml_collections.ConfigDict(spec))
  ev.output, ev.every = name, int(every)
  return ev


# The built-in evaluations (importing a module registers it).
from seqpe_jax.evaluators import lm_extrapolation, vit_resolution  # noqa: E402

__all__ = ['Evaluator', 'Table', 'register', 'get', 'build', 'build_entry', 'lm_extrapolation',
           'vit_resolution']
