"""benchmarks/sweep.py: command building, selection, the resumable two-phase scheduler."""

import dataclasses
import io
import json
import pathlib
import sys
import tempfile
import threading
from contextlib import redirect_stdout

from absl.testing import absltest

from benchmarks import sweep


@dataclasses.dataclass(frozen=True)
class FakeRun:
  """A run whose command appends its id to a shared log and writes its report."""

  id: str
  log: str
  after: str | None = None
  fail: bool = False

  def workdir(self, root: pathlib.Path) -> pathlib.Path:
    return root / self.id

  def command(self, root: pathlib.Path) -> list[str]:
    code = ('import json, pathlib, sys\n'
            f'open({self.log!r}, "a").write({self.id!r} + "\\n")\n'
            f'sys.exit(3) if {self.fail} else None\n'
            f'pathlib.Path({str(self.workdir(root))!r}, "report.json").write_text('
            f'json.dumps({{"id": {self.id!r}}}))\n')
    return [sys.executable, '-c', code]

  def prepare(self, root: pathlib.Path) -> None:
    (self.workdir(root) / 'prepared').write_text(self.after or '')

  def record(self, root: pathlib.Path) -> dict | None:
    path = self.workdir(root) / 'report.json'
    return json.loads(path.read_text()) if path.is_file() else None


class CommandTest(absltest.TestCase):

  def test_one_flag_per_key_last_wins(self):
    self.assertEqual(sweep.one_per_key(['a=1', 'b.c=(1,2)', 'a=2', 'b.c=(3,)']),
                     ('a=2', 'b.c=(3,)'))

  def test_main_command(self):
    cmd = sweep.main_command('configs/x.py', pathlib.Path('/r/a'), ['seed=1', 'seed=2'])
    self.assertEqual(cmd[1:], ['-m', 'seqpe_jax.main', '--config=configs/x.py',
                               '--workdir=/r/a', '--config.seed=2'])
    cmd = sweep.main_command('configs/x.py', pathlib.Path('/r/a'), [], mode='eval')
    self.assertIn('--mode=eval', cmd)

  def test_cell(self):
    self.assertEqual(sweep.cell([], 2), '–')
    self.assertEqual(sweep.cell([1.234], 2), '1.23')
    self.assertEqual(sweep.cell([1.0, 2.0, 4.5], 1), '2.5 [1.0–4.5]')

  def test_select(self):
    runs = [FakeRun('a/seed0', ''), FakeRun('b/seed0', ''), FakeRun('a/seed1', '')]
    self.assertEqual([r.id for r in sweep.select(runs, '^a/')], ['a/seed0', 'a/seed1'])
    self.assertLen(sweep.select(runs, ''), 3)


class RunAllTest(absltest.TestCase):

  def test_dependent_runs_go_last_and_a_rerun_skips_done_runs(self):
    with tempfile.TemporaryDirectory() as tmp:
      root, log = pathlib.Path(tmp), f'{tmp}/order.log'
      runs = [FakeRun('eval/seed0', log, after='train/seed0'), FakeRun('train/seed0', log),
              FakeRun('other/seed0', log)]
      writes = []
      with redirect_stdout(io.StringIO()) as out:
        n = sweep.run_all(runs, root, jobs=1, pinned=False, write=writes.append)
      self.assertEqual(n, 3)
      order = pathlib.Path(log).read_text().split()
      self.assertEqual(order[-1], 'eval/seed0')  # after every run without `after`
      self.assertEqual(sorted(order), sorted(r.id for r in runs))
      self.assertEqual((root / 'eval/seed0/prepared').read_text(), 'train/seed0')
      self.assertLen(writes, 4)  # after each run and once at the end
      self.assertLen(writes[-1], 3)
      self.assertIn('3 runs, 0 already done', out.getvalue())
      with redirect_stdout(io.StringIO()) as out:
        self.assertEqual(sweep.run_all(runs, root, jobs=2, pinned=False,
                                       write=lambda r: None), 3)
      self.assertIn('3 runs, 3 already done', out.getvalue())
      self.assertLen(pathlib.Path(log).read_text().split(), 3)  # nothing ran again

  def test_a_failed_run_is_reported_and_counted_out(self):
    with tempfile.TemporaryDirectory() as tmp:
      root, log = pathlib.Path(tmp), f'{tmp}/order.log'
      runs = [FakeRun('bad/seed0', log, fail=True), FakeRun('good/seed0', log)]
      written = []
      with self.assertRaises(SystemExit) as exit_, redirect_stdout(io.StringIO()) as out:
        sweep.main(runs, root=tmp, output=f'{tmp}/r.json', only='', jobs=2, pinned=False,
                   list_only=False, write=lambda r, path: written.append((len(r), path)))
      self.assertEqual(exit_.exception.code, 1)
      self.assertIn('bad/seed0: FAILED (rc 3', out.getvalue())
      self.assertIn('good/seed0: ok', out.getvalue())
      self.assertIn(f'1/2 runs in {tmp}/r.json', out.getvalue())
      self.assertEqual(written[-1], (1, pathlib.Path(f'{tmp}/r.json')))

  def test_list_only_runs_nothing(self):
    with tempfile.TemporaryDirectory() as tmp:
      root, log = pathlib.Path(tmp), f'{tmp}/order.log'
      with redirect_stdout(io.StringIO()) as out:
        sweep.run_all([FakeRun('a/seed0', log)], root, jobs=1, pinned=False,
                      write=lambda r: None, list_only=True)
      self.assertIn('todo a/seed0', out.getvalue())
      self.assertIn('0 done, 1 to do', out.getvalue())
      self.assertFalse(pathlib.Path(log).exists())

  def test_pinned_sets_single_thread_xla(self):
    with tempfile.TemporaryDirectory() as tmp:
      root = pathlib.Path(tmp)

      @dataclasses.dataclass(frozen=True)
      class EnvRun(FakeRun):
        def command(self, root):
          return [sys.executable, '-c', 'import os; print(os.environ["XLA_FLAGS"])']

      run = EnvRun('env/seed0', '')
      with redirect_stdout(io.StringIO()):
        sweep.execute(run, root, 0, threading.Lock(), pinned=True)
      self.assertIn('--xla_cpu_multi_thread_eigen=false',
                    (root / 'env/seed0/run.log').read_text())


if __name__ == '__main__':
  absltest.main()
