"""Multi-host start-up: `jax.distributed.initialize()` before any other JAX call.

On TPU pods, SLURM and Open MPI, JAX finds the coordinator, the process count
and the process id by itself. Elsewhere (e.g. several CPU processes on one
machine, or a custom launcher) set them explicitly:

  SEQPE_COORDINATOR=host:port SEQPE_NUM_PROCESSES=N SEQPE_PROCESS_ID=i

CPU processes talk through gloo collectives.
"""

from __future__ import annotations

import os

import jax


def initialize() -> None:
  """Joins this process to the multi-controller runtime (idempotent per process)."""
  kwargs = {}
  if os.environ.get('SEQPE_COORDINATOR'):
    kwargs = dict(coordinator_address=os.environ['SEQPE_COORDINATOR'],
                  num_processes=int(os.environ['SEQPE_NUM_PROCESSES']),
                  process_id=int(os.environ['SEQPE_PROCESS_ID']))
  if os.environ.get('JAX_PLATFORMS', '').startswith('cpu') or kwargs:
    try:  # cross-process collectives on CPU
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    except (AttributeError, ValueError):
      pass
  jax.distributed.initialize(**kwargs)
