"""Test-only fault injection: a hook the loss calls at named points.

`Task.loss_fn` passes each loss term through `hook(name, x, step)` (names in
`POINTS`). The default hook is the identity, so the traced step is unchanged;
`train.debug_nan='term@step,...'` builds a `NaNHook` that makes that term NaN
(or, for `grads`, the gradients alone) at those steps.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections

from seqpe_jax.errors import ConfigError

# The points the loss calls the hook at (also the terms `train.debug_nan` can poison).
POINTS = ('task', 'contrastive', 'ood', 'grads')

Hook = Callable[[str, jax.Array, jax.Array], jax.Array]


def identity(name: str, x: jax.Array, step: jax.Array) -> jax.Array:
  """The default hook: leaves every term as it is."""
  del name, step
  return x


def parse_debug_nan(spec: str, active: Iterable[str] = POINTS) -> dict[int, str]:
  """`'term@step,...'` → {step: term}; `active` are the terms the loss computes."""
  active = set(active)
  out: dict[int, str] = {}
  for item in filter(None, (x.strip() for x in str(spec or '').split(','))):
    term, _, step = item.partition('@')
    if term not in POINTS or not step.isdigit() or int(step) < 1:
      raise ConfigError(f"train.debug_nan items are 'term@step' with term in "
                        f"{', '.join(POINTS)} and step >= 1; got {item!r}")
    if term not in active:
      raise ConfigError(f'train.debug_nan poisons {term}, but that loss term is off '
                        '(pe.type is not seqpe or its aux weight is 0)')
    out[int(step)] = term
  return out


def nan_hook(train_cfg: ml_collections.ConfigDict, active: Iterable[str] = POINTS) -> Hook:
  """The hook of `train.debug_nan`: the identity when it is empty."""
  schedule = parse_debug_nan(train_cfg.get('debug_nan', ''), active)
  return NaNHook(schedule) if schedule else identity


class NaNHook:
  """`x`, or NaN (with NaN gradients) at the steps the schedule names for it."""

  def __init__(self, schedule: dict[int, str]):
    self.schedule = dict(schedule)

  def __call__(self, name: str, x: jax.Array, step: jax.Array) -> jax.Array:
    steps = [s for s, term in self.schedule.items() if term == name]
    if not steps:
      return x
    poison = jnp.isin(step + 1, jnp.asarray(steps))  # `step` counts finished updates
    if name == 'grads':
      return _nan_grads(x, poison)
    return x * jnp.where(poison, jnp.nan, 1.0)  # multiplicative: NaN gradients too


@jax.custom_vjp
def _nan_grads(x: jax.Array, poison: jax.Array) -> jax.Array:
  """Identity whose gradient is NaN where `poison` (finite loss, NaN gradients)."""
  del poison
  return x


def _nan_grads_fwd(x, poison):
  return x, poison


def _nan_grads_bwd(poison, g):
  return jnp.where(poison, jnp.nan, g), None


_nan_grads.defvjp(_nan_grads_fwd, _nan_grads_bwd)
