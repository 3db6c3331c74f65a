r"""Entry point: train and/or evaluate a config.

  python -m seqpe_jax.main --config=configs/lm_wikitext2.py --workdir=runs/wt2 \
      [--config.pe.type=rope] [--config.train.steps=2000] [--mode=train|eval]

Exit codes (one line on stderr, never a traceback for these):

  0   done
  2   `error: ...` a mistake in the flags, config, data or workdir, found before
      anything is written (the workdir is left exactly as it was)
  3   `error: non-finite ...` a NaN/Inf loss term or gradient; the step is not saved
  74  `error: writing the checkpoint ...` disk full / I/O error; the previous
      checkpoint is intact
  75  `preempted (SIGTERM) ...` checkpoint written (or nothing to save); rerun
      the same command to resume
  130 `error: interrupted` a second Ctrl-C

Set `--distributed` (or SEQPE_DISTRIBUTED=1) on multi-host TPU pods / SLURM to
call `jax.distributed.initialize()` first.
"""

from __future__ import annotations

import difflib
import logging
import os
import pathlib
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

# `configs/*.py` import `from configs import common`: make that work from any directory.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if (_REPO_ROOT / 'configs').is_dir() and str(_REPO_ROOT) not in sys.path:
  sys.path.append(str(_REPO_ROOT))

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, results).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes, then evaluates) or eval (latest checkpoint only).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', os.environ.get('SEQPE_DISTRIBUTED') == '1',
                                 'Call jax.distributed.initialize() (multi-host).')

INTERRUPTED_EXIT_CODE = 130


class _DropOrbaxErrorLogs(logging.Filter):
  """Drops orbax's ERROR logs (with tracebacks) of a failed background checkpoint write,
  and its timing warning about waiting for the previous save.

  orbax re-raises that failure to the caller, where it becomes one
  `CheckpointWriteError` line; its own log would repeat it as two tracebacks. The wait
  warning appears whenever a busy machine makes an asynchronous save outlast one second:
  not something a successful run should print.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}checkpoint{os.sep}' not in record.pathname:
      return True
    if record.levelno >= logging.ERROR:
      return False
    return 'Waiting for previous save to complete' not in record.getMessage()


def _fail(message: str, code: int, prefix: str = 'error: ') -> None:
  line = ' '.join(message.split())  # one line, whatever the message held
  print(f'{prefix}{line}', file=sys.stderr, flush=True)
  sys.exit(code)


# ---------------------------------------------------------------------------- validation

def build_run(config, workdir: str, mode: str = 'train'):
  """Validates everything, loads data, builds task/optimizer; writes nothing."""
  import jax

  from seqpe_jax import evaluators, optim, sharding
  from seqpe_jax.checkpoint import check_compatible, check_init_from, has_checkpoint
  from seqpe_jax.errors import CheckpointError, ConfigError, UserError
  from seqpe_jax.tasks import kind_of
  from seqpe_jax.train import Run

  kind = kind_of(config.task)
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise UserError(f'--workdir={workdir} exists and is not a directory')
  t = config.train
  for key in ('steps', 'batch_size', 'log_every', 'checkpoint_every', 'keep_checkpoints',
              'grad_accum'):
    if int(t.get(key, 1)) < 1:
      raise ConfigError(f'train.{key} must be positive, got {t[key]}')
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  accum = int(t.get('grad_accum', 1))
  if int(t.batch_size) % (dp * accum) or int(t.batch_size) % jax.process_count():
    raise ConfigError(f'train.batch_size={t.batch_size} must be divisible by the data-parallel '
                      f'devices ({dp}) x grad_accum ({accum}) and by the process count')
  if t.get('nonfinite', 'stop') not in ('stop', 'skip'):
    raise ConfigError(f"train.nonfinite must be stop or skip, got {t.nonfinite!r}")
  if int(t.get('eval_every', 0)) < 0:
    raise ConfigError(f'train.eval_every must be >= 0 (0: off), got {t.eval_every}')
  if t.get('keep_best', False) and not int(t.get('eval_every', 0)):
    raise ConfigError('train.keep_best needs train.eval_every > 0 (validation picks the best)')
  which = config.eval.get('checkpoint', 'latest')
  if which not in ('latest', 'best'):
    raise ConfigError(f"eval.checkpoint must be latest or best, got {which!r}")
  if which == 'best' and not t.get('keep_best', False):
    raise ConfigError('eval.checkpoint=best needs train.keep_best=True (and train.eval_every > 0)')
  ckpt_exists = has_checkpoint(path)
  if mode == 'eval' and not ckpt_exists:
    raise CheckpointError(f'no checkpoint in {path / "checkpoints"}; train first (--mode=train)')
  check_compatible(workdir, config, ckpt_exists)  # before the (slow) data loading
  if config.get('init_from', '') and not ckpt_exists and mode == 'train':
    check_init_from(config.init_from, config)
  local_batch = int(t.batch_size) // jax.process_count()
  seed = int(config.seed)
  pidx, pcount = jax.process_index(), jax.process_count()
  data = kind.build_data(config, batch_size=local_batch, seed=seed, process_index=pidx,
                         process_count=pcount)
  task = kind.from_data(config, data, data_parallel=dp)
  evaluators.build(task, config)  # the evaluation fields, before the optimizer's
  tx, lr_fn = optim.build_optimizer(config.optim, int(t.steps))
  evals = _probe_data(config, task, data, mode)
  return Run(config, path, task, mesh, data, tx, lr_fn, evals)


def _probe_data(config, task, data, mode: str) -> list:
  """Reads the first training batch and every evaluation split once, before training.

  Problems that would otherwise appear mid-run or after training (an undecodable
  image, a missing or corrupt evaluation split) become one-line errors while the
  workdir is still untouched. The train iterator is rewound afterwards. Returns the
  run's evaluators (each pre-reads its data when built).
  """
  from seqpe_jax import evaluators
  if mode == 'train':
    it = data.train_iter
    start = it.get_state()
    next(it)
    it.set_state(start)
  evals = evaluators.build(task, config, data)
  if int(config.train.get('eval_every', 0)) and config.data.eval_split not in config.eval.splits:
    task.probe_split(data, config.data.eval_split)  # the periodic validation's split
  return evals


def validate_config_early(config) -> None:
  """Checks that need no data (PE type, heads, ...) before the data is loaded."""
  from seqpe_jax.errors import ConfigError
  from seqpe_jax.tasks import kind_of
  kind_of(config.task).check_early(config)
  m = config.model
  if int(m.num_heads) < 1 or int(m.width) % int(m.num_heads):
    raise ConfigError(f'model.width={m.width} is not divisible by model.num_heads={m.num_heads}')


# ---------------------------------------------------------------------------- main

def main(argv) -> None:
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # keep the console to the progress bar
  logging.getLogger('absl').addFilter(_DropOrbaxErrorLogs())
  from seqpe_jax import validate
  from seqpe_jax.errors import RunStopped, UserError
  from seqpe_jax.train import _SignalFlag, evaluate_run, restore_params, train

  config, workdir = _CONFIG.value, _WORKDIR.value
  step = 0
  # A signal before training starts or during evaluation has nothing to checkpoint: exit
  # at once (75). `train` installs its own handler that checkpoints first.
  signals = _SignalFlag(immediate='before training started; nothing was saved; rerun the '
                        'same command to start')
  try:
    with signals:
      if config is None:
        raise UserError('--config is required, e.g. --config=configs/lm_wikitext2.py')
      if not workdir:
        raise UserError('--workdir is required, e.g. --workdir=runs/wt2')
      if _DISTRIBUTED.value:  # before any other JAX call
        from seqpe_jax import distributed
        distributed.initialize()
      validate_config_early(config)
      validate.check_config(config)  # train / optim / mesh / data / checkpoint fields
      run = build_run(config, workdir, _MODE.value)
      run.workdir.mkdir(parents=True, exist_ok=True)
      which = run.config.eval.get('checkpoint', 'latest')
      if _MODE.value == 'train':
        state, step = train(run)
        params = state.params
        if which == 'best':  # evaluate the model selected by validation (official)
          params, step = restore_params(run, 'best')
      else:
        params, step = restore_params(run, which)
      signals.immediate = (f'during evaluation; the checkpoint at step {step} is complete; '
                           'rerun the same command to evaluate')
      report = evaluate_run(run, params)
  except UserError as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code)
  except RunStopped as e:
    _fail(str(e), e.exit_code, prefix='' if str(e).startswith('preempted') else 'error: ')
  except KeyboardInterrupt:
    _fail('interrupted (a second Ctrl-C); the newest complete checkpoint is intact',
          INTERRUPTED_EXIT_CODE)
  from seqpe_jax.evaluate import markdown_table
  import jax
  if jax.process_index() == 0:
    first = run.evaluators[0]
    print(f'\nstep {step}: {first.table.title} results (also in '
          f'{run.workdir}/{first.output}.md)\n')
    print(markdown_table(report, first.table), flush=True)


# ---------------------------------------------------------------------------- flags

def _last_line(text: str) -> str:
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ''


def _unknown_override(argv: list[str], error: BaseException) -> str | None:
  """`unknown config key a.b (did you mean a.c?)` for the first bad `--config.a.b=` flag."""
  overrides = [a[len('--config.'):].split('=', 1)[0] for a in argv[1:]
               if a.startswith('--config.')]
  cfg = FLAGS['config'].value
  if hasattr(cfg, 'keys'):
    for dotted in overrides:
      node, parts = cfg, dotted.split('.')
      for i, part in enumerate(parts):
        keys = list(node.keys()) if hasattr(node, 'keys') else []
        if part not in keys:
          close = difflib.get_close_matches(part, keys, n=1)
          hint = f' (did you mean {".".join(parts[:i] + close)}?)' if close else ''
          return f'unknown config key {dotted}{hint}'
        node = node[part]
    return None
  # The config is not available while its overrides are parsed: use ConfigDict's message,
  # "'stepz'\nDid you mean "steps" instead of "stepz"?".
  m = re.search(r"'(\w+)'", str(error).replace("\\'", "'"))
  if not m:
    return None
  key = m.group(1)
  close = re.search(r'Did you mean "(\w+)"', str(error))
  for dotted in overrides:
    parts = dotted.split('.')
    if key in parts:
      i = parts.index(key)
      hint = f' (did you mean {".".join(parts[:i] + [close.group(1)])}?)' if close else ''
      return f'unknown config key {".".join(parts[:i + 1])}{hint}'
  return None


def _flag_error(e: BaseException, argv: list[str]) -> str:
  """One readable line for a flag / config-file error."""
  text = str(e)
  if 'Traceback (most recent call last)' in text:  # config_flags embeds get_config's traceback
    cause = _last_line(text)
    for prefix in ('ValueError: ', 'ConfigError: '):
      cause = cause[len(prefix):] if cause.startswith(prefix) else cause
    flag = text.split(': Error whilst parsing', 1)[0].removeprefix('flag ')
    return f'invalid {flag}: {cause}'
  if isinstance(e, (AttributeError, KeyError, flags.UnrecognizedFlagError)):
    unknown = _unknown_override(argv, e)
    if unknown:
      return unknown
  if isinstance(e, flags.Error):
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
  detail = text.strip().splitlines()[0] if text.strip() else ''
  return f'invalid --config: {type(e).__name__}: {detail}'.rstrip(': ')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a one-line error and exit code 2 for user mistakes."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error(e, argv), 2)
  except (ValueError, KeyError, AttributeError, TypeError, OSError, SyntaxError,
          ImportError, NameError) as e:
    _fail(_flag_error(e, argv), 2)
  # config_flags defers a config file that failed to load until its first use.
  try:
    if _CONFIG.value is not None:
      _CONFIG.value.keys()
  except Exception as e:  # pylint: disable=broad-except
    given = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '?')
    _fail(f'cannot load --config={given}: {_last_line(str(e))}', 2)
  if len(rest) > 1:
    _fail(f'unexpected positional arguments: {" ".join(rest[1:])}', 2)
  return rest


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
