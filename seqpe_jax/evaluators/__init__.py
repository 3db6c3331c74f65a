"""Evaluations as plug-ins (big_vision's evaluator pattern), chosen by name.

An evaluator is a class `@register('<name>')`ed here: `__init__(task, config, data=None)`
validates its `config.eval.*` fields and, given the run's data, pre-reads what it will
evaluate (before anything is written); `run(params, mesh)` returns rows (plain dicts);
`evaluate.write_report` turns them into `<output>.{json,md,png}` from its `table`. Each
task kind names its default evaluations (`Task.default_evaluations`).
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

  def __init__(self, task: Task, config: ml_collections.ConfigDict, data: Any = None):
    self.task, self.config, self.data = task, config, data

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
  """The task's default evaluations, validated (and their data pre-read when given)."""
  return [get(name)(task, config, data) for name in task.default_evaluations]


# The built-in evaluations (importing a module registers it).
from seqpe_jax.evaluators import lm_extrapolation, vit_resolution  # noqa: E402

__all__ = ['Evaluator', 'Table', 'register', 'get', 'build', 'lm_extrapolation',
           'vit_resolution']
