"""Helpers shared by several test modules (not collected by pytest)."""

import hashlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import types

from absl import flags
from absl.testing import parameterized


REPO = pathlib.Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
  """The environment of a CLI subprocess: one CPU device (as a user's run), the repo on path."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'device_count' not in f)
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(REPO)
  return env


_SCRIPT_PREFIX = 'benchmark_script_'


def load_script(relpath: str) -> types.ModuleType:
  """Imports a `benchmarks/` script as a module, for testing its functions in-process.

  Scripts define absl flags at import and two of them share names (`--profile`, `--root`,
  ...): the flags of a script loaded earlier in the same process are removed first, so a
  test worker may load several. Tests call the scripts' functions, never read their flags.
  """
  for module, defined in flags.FLAGS.flags_by_module_dict().copy().items():
    if module.startswith(_SCRIPT_PREFIX):
      for flag in list(defined):  # deleting a flag edits this list
        if flag.name in flags.FLAGS:
          delattr(flags.FLAGS, flag.name)
  name = _SCRIPT_PREFIX + pathlib.Path(relpath).stem
  spec = importlib.util.spec_from_file_location(name, REPO / relpath)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while it executes
  spec.loader.exec_module(module)
  return module


def tree_hash(root) -> str | None:
  """A hash of every path and file byte under `root` (None if it does not exist)."""
  root = pathlib.Path(root)
  if not root.exists():
    return None
  if root.is_file():
    return hashlib.sha256(root.read_bytes()).hexdigest()
  h = hashlib.sha256()
  for p in sorted(root.rglob('*')):
    h.update(str(p.relative_to(root)).encode())
    if p.is_file():
      h.update(p.read_bytes())
  return h.hexdigest()


class TmpDirTestCase(parameterized.TestCase):
  """A per-test temporary directory (`self.tmp`, cache at `self.cache`) and error checks."""

  def setUp(self):
    super().setUp()
    self.tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
    self.cache = self.tmp / 'cache'

  def assertOneLineError(self, error_type, fn, *needles):
    with self.assertRaises(error_type) as ctx:
      fn()
    self.assertNotIn('\n', str(ctx.exception))
    for needle in needles:
      self.assertIn(needle, str(ctx.exception))
