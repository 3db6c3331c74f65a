"""The resumable run scheduler behind benchmarks/lm_extrapolation.py and vit_resolution.py.

A sweep is a list of runs, each one `python -m seqpe_jax.main` in its own workdir; a
run is done when its report exists (`Run.record(root)` is not None), so a rerun skips
finished runs and an interrupted one resumes from its checkpoint. A run may name another
run it needs (`Run.after`, e.g. an evaluation-only run of a checkpoint another run
trains): those go in a second phase. The scripts keep their own grids, records, tables
and flags; this module only builds commands and runs them.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable, Protocol

REPO = pathlib.Path(__file__).resolve().parents[1]


class Run(Protocol):
  """What the scheduler needs of a run (the scripts' own dataclasses)."""

  @property
  def id(self) -> str: ...

  def workdir(self, root: pathlib.Path) -> pathlib.Path: ...

  def command(self, root: pathlib.Path) -> list[str]: ...

  def record(self, root: pathlib.Path) -> dict | None: ...


def one_per_key(sets: Iterable[str]) -> tuple[str, ...]:
  """`key=value` overrides, one per key, the last one winning.

  A repeated tuple-valued config flag is not replaced by ml_collections
  (`('valid','test')` then `('valid',)` gave three splits), so each key is passed once.
  """
  return tuple({s.split('=', 1)[0]: s for s in sets}.values())


def main_command(config: str, workdir: pathlib.Path, sets: Iterable[str],
                 mode: str = 'train') -> list[str]:
  """The `seqpe_jax.main` command line of one run (`mode`: train | eval)."""
  cmd = [sys.executable, '-m', 'seqpe_jax.main', f'--config={config}', f'--workdir={workdir}']
  if mode != 'train':
    cmd.append(f'--mode={mode}')
  return [*cmd, *(f'--config.{s}' for s in one_per_key(sets))]


def select(runs: list, only: str) -> list:
  """The runs whose id matches the regex `only` ('' keeps all)."""
  return [r for r in runs if re.search(only, r.id)] if only else list(runs)


def execute(run: Run, root: pathlib.Path, slot: int, lock: threading.Lock,
            pinned: bool) -> int:
  """Runs one command into `<workdir>/run.log`; `pinned`: one core, single-thread XLA.

  Two pinned single-thread processes beat one two-thread process on a 2-core CPU.
  """
  env = dict(os.environ)
  cmd = run.command(root)
  if pinned:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false '
                        'intra_op_parallelism_threads=1').strip()
    cmd = ['taskset', '-c', str(slot % (os.cpu_count() or 1)), *cmd]
  workdir = run.workdir(root)
  workdir.mkdir(parents=True, exist_ok=True)
  prepare = getattr(run, 'prepare', None)
  if prepare is not None:
    prepare(root)
  log = workdir / 'run.log'
  t0 = time.time()
  with open(log, 'w') as f:
    rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
  with lock:
    status = 'ok' if rc == 0 else f'FAILED (rc {rc}, see {log})'
    print(f'{run.id}: {status} in {time.time() - t0:.0f} s', flush=True)
  return rc


def run_all(runs: list, root: pathlib.Path, *, jobs: int, pinned: bool,
            write: Callable[[list[dict]], None], list_only: bool = False) -> int:
  """Runs what is not done yet, `jobs` at a time; returns the number of records.

  `write(records)` is called after every finished run (the tables stay current while a
  long sweep runs). Runs with an `after` id run once every other run has finished.
  """
  todo = [r for r in runs if r.record(root) is None]
  if list_only:
    for r in runs:
      print(('todo ' if r in todo else 'done ') + r.id)
    print(f'{len(runs) - len(todo)} done, {len(todo)} to do')
    return len(runs) - len(todo)
  print(f'{len(runs)} runs, {len(runs) - len(todo)} already done', flush=True)
  lock = threading.Lock()
  slots = list(range(max(jobs, 1)))
  records = lambda: [x for r in runs if (x := r.record(root))]

  def job(run: Run) -> None:
    with lock:
      slot = slots.pop(0)
    try:
      execute(run, root, slot, lock, pinned)
    finally:
      with lock:
        slots.append(slot)
        write(records())

  first = [r for r in todo if not getattr(r, 'after', None)]
  second = [r for r in todo if getattr(r, 'after', None)]
  with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
    list(pool.map(job, first))
    list(pool.map(job, second))
  done = records()
  write(done)
  return len(done)


def main(runs: list, *, root: str, output: str, only: str, jobs: int, pinned: bool,
         list_only: bool, write: Callable[[list[dict], pathlib.Path], None]) -> None:
  """A script's main: select, list or run, report; exit status 1 when some run failed."""
  root_path, output_path = pathlib.Path(root), pathlib.Path(output)
  runs = select(runs, only)
  done = run_all(runs, root_path, jobs=jobs, pinned=pinned, list_only=list_only,
                 write=lambda records: write(records, output_path))
  if list_only:
    return
  print(f'{done}/{len(runs)} runs in {output_path} (+ .md, .png)')
  if done < len(runs):
    sys.exit(1)


def cell(values: list[float], digits: int) -> str:
  """A table cell: the mean, with [min–max] when there is more than one value."""
  if not values:
    return '–'
  mean, lo, hi = sum(values) / len(values), min(values), max(values)
  if len(values) == 1:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]'
