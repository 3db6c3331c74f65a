"""Helpers shared by several test modules (not collected by pytest)."""

import hashlib
import os
import pathlib
import tempfile

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
