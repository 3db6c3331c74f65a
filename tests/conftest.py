"""Test setup: 8 fake CPU devices, set before anything initialises a JAX backend."""

import os
import pathlib
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
# Tests compile hundreds of small programs and run each a few steps: LLVM's optimisation of
# the generated kernels was ~40% of the compile time (a SeqPE smoke step: 11.7 s -> 7.0 s at
# level 0; the whole suite ~1,500 s -> ~1,050 s on the 2-core VM). XLA's HLO passes and
# fusion are unchanged; the float results move in the last bits (a 3-step smoke run's params
# differ by <= 3.4e-6 from the default level's). Inherited by the CLI subprocesses;
# benchmarks and users' runs keep XLA's default level.
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests never write into the user's cache.
os.environ['SEQPE_CACHE_DIR'] = tempfile.mkdtemp(prefix='seqpe_test_cache_')
# A session-wide persistent compilation cache: identical programs (rebuilt jits, subprocess
# runs of the CLI) compile once. Inherited by subprocesses through the environment.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='seqpe_test_jcc_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import jax  # noqa: E402  (must follow the environment set-up)
import pytest  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / 'shared'


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared; skips the calling test only if ../shared is absent."""
  if not SHARED.is_dir():
    pytest.skip(f'{SHARED} is absent (the read-only shared folder beside the repo)')
  return SHARED.joinpath(*parts)
