"""Training: sharded state, the pure jitted train step, and the loop.

The step `train_step(state, batch, rng)` is jitted once with in/out shardings
and the state donated. Nothing host-side runs per step except feeding the
next batch: metrics of step n are fetched after step n+1 is dispatched, so the
device never waits for the host.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from seqpe_jax import checkpoint, evaluate, evaluators, optim, sharding
from seqpe_jax.errors import (NONFINITE_EXIT_CODE, PREEMPTED_EXIT_CODE, CheckpointError,
                              NonFiniteError, Preempted, UserError)
from seqpe_jax.metrics import MetricWriter
from seqpe_jax.tasks import Task, count_params

TERMS = ('task_loss', 'contrastive', 'ood')
# How the NaN guard names each term in its one-line report.
TERM_NAMES = {'task_loss': 'task loss', 'contrastive': 'contrastive loss',
              'ood': 'OOD distillation loss', 'gradients': 'gradients'}


# ---------------------------------------------------------------------------- state

def create_train_state(task: Task, tx: optax.GradientTransformation, mesh, rng: jax.Array
                       ) -> tuple[train_state.TrainState, Any]:
  """Initialises the state directly sharded (jitted init with out_shardings)."""
  def init_boxed(r):
    return train_state.TrainState.create(apply_fn=task.model.apply, params=task.init(r), tx=tx)
  abstract = jax.eval_shape(init_boxed, rng)
  shardings = sharding.logical_shardings(abstract, mesh)
  state = jax.jit(lambda r: nn.meta.unbox(init_boxed(r)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings (for sharded restore)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


# ---------------------------------------------------------------------------- step

def _tree_finite(tree) -> jax.Array:
  """bool scalar: every entry of every leaf is finite.

  Combined with a sort, not `.all()`: XLA rewrites a reduce over the stacked per-leaf flags
  into a chain of scalar ANDs and copies that chain into every per-leaf update fusion that
  reads the flag (leaves x leaves ops: 9,160 of a tiny ViT step's 79,881 HLO lines, and
  quadratic compile time in the leaf count). A sort is not fused, so the flag is computed once.
  """
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.array(True)
  return jnp.sort(jnp.stack(leaves).astype(jnp.int32))[0] == 1


def make_train_step(task: Task, lr_fn: Callable, grad_accum: int = 1) -> Callable:
  """The pure step: grads (optionally accumulated over micro-batches) → AdamW update.

  A non-finite loss term or gradient leaves params and optimizer state
  unchanged (the step counter still advances with the data); the host decides
  whether to stop or skip from the `finite_*` metrics.
  """
  grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)

  def train_step(state: train_state.TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum == 1:
      (_, metrics), grads = grad_fn(state.params, batch, rng, state.step)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

      def body(carry, i):
        mb = jax.tree.map(lambda x: x[i], micro)
        (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), state.step)
        return jax.tree.map(jnp.add, carry, (g, m)), None
      zeros = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro),
                                             rng, state.step))
      init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[1], zeros[0][1]))
      (grads, metrics), _ = jax.lax.scan(body, init, jnp.arange(grad_accum))
      grads, metrics = jax.tree.map(lambda x: x / grad_accum, (grads, metrics))
    with jax.named_scope('optimizer'):  # the update and the non-finite guard
      norms = optim.group_norms(grads)
      finite_grads = _tree_finite(grads)
      ok = finite_grads & jnp.isfinite(metrics['loss'])
      updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                opt_state=keep(opt_state, state.opt_state))
    metrics = {**metrics, 'lr': lr_fn(state.step), 'grad_norm': norms[optim.BACKBONE_GROUP],
               'pe_grad_norm': norms[optim.PE_GROUP],
               'finite_grads': finite_grads.astype(jnp.float32)}
    for t in TERMS:
      if t in metrics:
        metrics[f'finite_{t}'] = jnp.isfinite(metrics[t]).astype(jnp.float32)
    return new_state, metrics
  return train_step


def jit_train_step(step_fn: Callable, state_shardings, mesh) -> Callable:
  """Jits the step once: state in/out with its shardings (donated), batch split on dim 0."""
  # One sharding as a prefix of the whole batch dict: whatever fields the data pipeline
  # yields (e.g. mixup's soft `label_probs`), each is split over the batch axes on dim 0.
  batch_sh = sharding.batch_sharding(mesh, 1)
  repl = sharding.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sh, repl),
                 out_shardings=(state_shardings, repl), donate_argnums=(0,))


# ---------------------------------------------------------------------------- loop

class _SignalFlag:
  """Turns SIGTERM / SIGINT into a flag that the training loop checks between steps.

  With `immediate` (words saying what was interrupted) the first signal raises
  `Preempted` at once instead, for phases with nothing to checkpoint (loading
  data, evaluating). While a checkpoint is pending a second SIGTERM is ignored
  (the write completes) and a second SIGINT aborts (`KeyboardInterrupt`).
  Handlers are installed from the main thread only and restored on exit, so
  flags nest.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, immediate: str | None = None):
    self.immediate = immediate
    self.raised = False
    self.name = ''
    self._old: dict[int, Any] = {}

  def __enter__(self) -> '_SignalFlag':
    for sig in self.SIGNALS:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside a test runner thread)
        pass
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.raised:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      return
    self.raised, self.name = True, name
    if self.immediate is not None:
      raise Preempted(f'preempted ({name}) {self.immediate}')
    print(f'\n{name} received: checkpointing after the current step, then exiting', flush=True)

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old if old is not None else signal.SIG_DFL)
    self._old = {}


def _bad_terms(m: dict) -> list[str]:
  bad = [t for t in TERMS if m.get(f'finite_{t}', 1.0) < 1.0]
  if m.get('finite_grads', 1.0) < 1.0:
    bad.append('gradients')
  return bad


def _describe_bad(bad: list[str]) -> str:
  terms = [TERM_NAMES[b] for b in bad if b != 'gradients']
  if not terms:
    return 'gradients (all loss terms finite)'
  return ' and '.join(terms) + (' (and gradients)' if 'gradients' in bad else '')


@dataclasses.dataclass
class Run:
  """Everything a training run holds (built by `main.build_run`)."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  task: Task
  mesh: Any
  data: Any                  # LMData | ImageData
  tx: optax.GradientTransformation
  lr_fn: Callable
  evaluators: list = dataclasses.field(default_factory=list)  # evaluators.Evaluator


def train(run: Run) -> tuple[train_state.TrainState, int]:
  """Trains to `train.steps` (resuming from the workdir); returns (state, step).

  Stops with `Preempted` (SIGTERM/SIGINT/preemption notice: checkpoint at the
  current step), `NonFiniteError` (nothing saved for the bad step) or
  `CheckpointWriteError`; in every case the pending checkpoint write is
  completed (or reported) and the newest complete checkpoint stays intact.
  """
  t = run.config.train
  total = int(t.steps)
  with _SignalFlag() as signals:  # from here on a signal means "checkpoint, then exit"
    ckpt = checkpoint.Checkpointer(run.workdir, every=int(t.checkpoint_every),
                                   keep=int(t.keep_checkpoints),
                                   async_save=bool(t.async_checkpoint))
    try:
      state, writer = _train_loop(run, ckpt, signals, total)
    except BaseException:
      ckpt.close_quietly()  # lets an in-flight write finish: it is a complete checkpoint
      raise
    writer.close()
    ckpt.close()  # waits for the final write; CheckpointWriteError if it failed
    if signals.raised:  # arrived after the last step, whose checkpoint is now complete
      raise Preempted(f'preempted ({signals.name}) after the last step: the final checkpoint '
                      f'(step {total}) is complete; rerun the same command to evaluate')
  return state, total


def _train_loop(run: Run, ckpt: checkpoint.Checkpointer, signals: _SignalFlag, total: int
                ) -> tuple[train_state.TrainState, MetricWriter]:
  cfg, task, mesh = run.config, run.task, run.mesh
  t = cfg.train
  base_rng = jax.random.PRNGKey(int(cfg.seed))
  state, shardings = create_train_state(task, run.tx, mesh, jax.random.fold_in(base_rng, 1))
  train_iter = run.data.train_iter
  restored = ckpt.restore(abstract_state(state, shardings), train_iter)
  start = 0
  if restored is not None:
    state, start = restored
    print(f'resumed from {ckpt.directory / str(start)} at step {start}', flush=True)
  elif cfg.get('init_from', ''):  # fine-tuning: another run's params, this run's optimizer
    params, from_step = checkpoint.restore_params_from(
        cfg.init_from, abstract_state(state.params, shardings.params), cfg)
    state = state.replace(params=params)
    print(f'initialised from {cfg.init_from} (step {from_step})', flush=True)
  checkpoint.write_config(run.workdir, cfg)
  if jax.process_index() == 0:
    print(f'{task.kind} with pe={task.pe.type}: {count_params(state.params):,} parameters on a '
          f'{dict(mesh.shape)} mesh; training steps {start}..{total}', flush=True)

  step_fn = jit_train_step(make_train_step(task, run.lr_fn, int(t.get('grad_accum', 1))),
                           shardings, mesh)
  writer = MetricWriter(run.workdir, total_steps=total, start_step=start)
  skip = t.get('nonfinite', 'stop') == 'skip'
  units = task.units
  per_step = int(t.batch_size) * task.items_per_example
  eval_every = int(t.get('eval_every', 0))
  periodic = [ev for ev in run.evaluators if ev.every]  # config.evals entries with every > 0
  best = checkpoint.BestCheckpoint(run.workdir) if t.get('keep_best', False) else None
  pending: tuple[int, Any] | None = None
  window: dict[str, float] = {}
  n_window, t_window = 0, time.time()

  def last_checkpoint() -> str:
    last = ckpt.latest_step()
    return ('no checkpoint was written yet' if last is None else
            f'the last checkpoint (step {last}) is untouched')

  def drain(pending_) -> None:
    """Pulls step metrics to the host: NaN check, windowed logging."""
    nonlocal window, n_window, t_window
    step_, m = pending_
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    bad = _bad_terms(m)
    if bad:
      msg = f'non-finite {_describe_bad(bad)} at step {step_}'
      if not skip:
        raise NonFiniteError(f'{msg}; stopped without saving that step, {last_checkpoint()}; '
                             'lower optim.lr, or set train.nonfinite=skip to skip such steps')
      print(f'warning: {msg}; its update was skipped (train.nonfinite=skip)', file=sys.stderr,
            flush=True)
    for k, v in m.items():
      window[k] = window.get(k, 0.0) + v
    n_window += 1
    if step_ % int(t.log_every) == 0 or step_ == total:
      dt = max(time.time() - t_window, 1e-9)
      row = {k: v / n_window for k, v in window.items() if not k.startswith('finite_')}
      row[f'{units}_per_sec'] = per_step * n_window / dt
      row['step_time_ms'] = 1000 * dt / n_window
      writer.write(step_, row)
      window, n_window, t_window = {}, 0, time.time()

  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      for step in range(start, total):
        try:
          local = next(train_iter)
        except UserError as e:  # e.g. an undecodable image met mid-epoch
          raise type(e)(f'{str(e).splitlines()[0]} (reading the batch of step {step + 1}; '
                        f'{last_checkpoint()})') from None
        batch = sharding.global_batch(local, mesh)
        state, metrics = step_fn(state, batch, base_rng)  # async dispatch
        if pending is not None:
          drain(pending)
        pending = (step + 1, metrics)
        writer.advance()
        preempt = signals.raised or ckpt.reached_preemption(step + 1)
        if preempt or ckpt.manager.should_save(step + 1) or step + 1 == total:
          drain(pending)  # never checkpoint a step before its NaN check
          pending = None
          # The iterator has yielded exactly the batches of steps 1..step+1, so its saved
          # position is where the resumed run continues (the PRNG is folded by step).
          ckpt.save(step + 1, state, train_iter, force=preempt or step + 1 == total)
        # Validation every eval_every steps and after the last one (so keep_best always has
        # a model to offer, however short the run).
        validate = (step + 1) % eval_every == 0 or step + 1 == total if eval_every else False
        if validate and not preempt:
          if pending is not None:
            drain(pending)  # the NaN check (and its log row) come before the validation
            pending = None
          _validate(run, state.params, step + 1, writer, best)
        due = [ev for ev in periodic if (step + 1) % ev.every == 0]
        if due and not preempt:
          if pending is not None:
            drain(pending)
            pending = None
          for ev in due:
            writer.write(step + 1, eval_scalars(ev, ev.run(state.params, mesh)))
        if preempt:
          ckpt.wait()  # the preemption checkpoint is committed before we exit
          raise Preempted(f'preempted ({signals.name or "preemption notice"}): checkpoint '
                          f'written at step {step + 1} in {ckpt.directory}; rerun the same '
                          'command to resume')
      if pending is not None:
        drain(pending)
  except BaseException:
    writer.close()
    raise
  finally:
    if best is not None:
      best.close()
  return state, writer


def _validate(run: Run, params: Any, step: int, writer: MetricWriter,
              best: 'checkpoint.BestCheckpoint | None') -> None:
  """Periodic validation at the training size (`train.eval_every`), logged with the step;
  with `train.keep_best` the best model so far is kept in `<workdir>/best/`."""
  metrics, score = run.task.validation(params, run.mesh, run.data)
  if best is not None and best.update(step, params, score):
    metrics = {**metrics, 'best': 1.0}
  writer.write(step, metrics)


def eval_scalars(ev: 'evaluators.Evaluator', rows: list[dict]) -> dict[str, float]:
  """An evaluator's rows as scalars `evals/<name>[/<split>]/<metric>@<x>` (the split only
  when the rows hold several)."""
  tab = ev.table
  splits = {r.get('split') for r in rows}
  out = {}
  for r in rows:
    where = f'evals/{ev.output}' + (f'/{r.get("split")}' if len(splits) > 1 else '')
    if r.get(tab.metric) is not None:
      out[f'{where}/{tab.metric}@{r.get(tab.x_key)}'] = float(r[tab.metric])
  return out


def evaluate_run(run: Run, params: Any) -> dict:
  """Runs the run's evaluators, writes each one's report files; returns the first report."""
  if not run.evaluators:
    run.evaluators = evaluators.build(run.task, run.config, run.data)
  reports = []
  for ev in run.evaluators:
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
      results = ev.run(params, run.mesh)
    reports.append(evaluate.write_report(run.workdir, run.task, results, ev.table, ev.output))
  return reports[0]


def restore_params(run: Run, which: str = 'latest') -> tuple[Any, int]:
  """The params of the newest usable checkpoint in the workdir, or of the best one
  (`which='best'`, kept by `train.keep_best`), for evaluation alone."""
  if which == 'best':
    best = checkpoint.BestCheckpoint(run.workdir, create=False)
    try:
      with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
        state, shardings = create_train_state(run.task, run.tx, run.mesh, jax.random.PRNGKey(0))
        return best.restore(abstract_state(state.params, shardings.params))
    finally:
      best.close()
  if not checkpoint.has_checkpoint(run.workdir):
    raise CheckpointError(f'no checkpoint in {run.workdir / "checkpoints"}; train first '
                          '(--mode=train)')
  ckpt = checkpoint.Checkpointer(run.workdir, every=1, keep=1 << 30, async_save=False,
                                 create=False)
  try:
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
      state, shardings = create_train_state(run.task, run.tx, run.mesh, jax.random.PRNGKey(0))
      restored = ckpt.restore(abstract_state(state, shardings), None)
  finally:
    ckpt.close_quietly()
  if restored is None:
    raise CheckpointError(f'no checkpoint in {ckpt.directory}; train first (--mode=train)')
  return restored[0].params, restored[1]


__all__ = ['create_train_state', 'make_train_step', 'jit_train_step', 'train', 'evaluate_run',
           'eval_scalars',
           'restore_params', 'Run', 'Preempted', 'NonFiniteError',
           'PREEMPTED_EXIT_CODE', 'NONFINITE_EXIT_CODE']
