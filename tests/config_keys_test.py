"""Every config key the code reads is declared in the shipped configs, and every declared key
is read (issue 9 item 6). A static scan: no training, no data.

The scan parses every `seqpe_jax/**/*.py` and follows config objects by name, generically
(not per file), so it survives code moving between modules:

* roots: a variable or parameter named `config`, or any `<x>.config` (`run.config`,
  `task.config`), is the run config; parameters named as in `SECTION_PARAMS` hold a section;
* aliases: `t = config.train`, `e = config.eval.copy_and_resolve_references()`;
* calls: an argument that is a config (section) binds the callee's parameter of that
  position / keyword, for every function, method or class (its `__init__`) of that name,
  iterated to a fixed point (`Task(config)`, `regularisers.aux_settings(config.aux, ...)`,
  `schedule(cfg, ...)` from `build_optimizer(cfg)` called with `config.optim`);
* reads: `x.key`, `x.get('key', ...)`, `x['key']`, and `x[k]` / `x.get(k)` with `k` looping
  over a tuple of string constants (also a module-level one, e.g. `MESH_AXES`).

Sections read by field name through a dataclass are checked against that dataclass's
fields instead (`DATACLASS_SECTIONS`); `DYNAMIC` lists the rest, each with its reason.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
from typing import Any, Callable, Iterable

import ml_collections
from absl.testing import absltest

from configs import lm_wikitext103, lm_wikitext2, qa_babilong, smoke, vit_cifar10, vit_imagenet

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'seqpe_jax'

# The shipped configs, by task family (`config.task`).
FAMILIES: dict[str, dict[str, Callable[[], ml_collections.ConfigDict]]] = {
    'lm': {'lm_wikitext2': lm_wikitext2.get_config, 'lm_wikitext103': lm_wikitext103.get_config,
           'qa_babilong': qa_babilong.get_config,
           'qa_babilong_paper': lambda: qa_babilong.get_config('scale=paper'),
           'smoke': smoke.get_config},
    'vit': {'vit_cifar10': vit_cifar10.get_config, 'vit_imagenet': vit_imagenet.get_config,
            'smoke_vit': lambda: smoke.get_config('task=vit')},
}

# Parameter names that hold one section wherever they appear.
SECTION_PARAMS = {'data_cfg': ('data',), 'mesh_cfg': ('mesh',)}
ROOT_NAMES = {'config'}
# ConfigDict methods: not keys.
METHODS = {'get', 'keys', 'items', 'values', 'update', 'to_dict', 'copy_and_resolve_references',
           'lock', 'unlock', 'unlocked', 'ignore_type', 'to_json', 'to_json_best_effort',
           'get_ref', 'get_oneway_ref', 'setdefault', 'copy', 'is_locked', 'is_type_safe'}

# Keys declared by one task family only (the other family has no such setting).
FAMILY_ONLY = {
    'lm': ('train.seq_len',                   # training length (tokens)
           'eval.lengths', 'eval.max_tokens', 'eval.stride', 'eval.start_position',  # LM sweep
           'model.tie_embeddings',            # GPT output head
           'data.train_files', 'data.eval_files',  # data.name=files
           'data.tokenizer', 'data.vocab_size', 'data.spm_model_type', 'data.bpe_vocab',
           'data.bpe_merges',                 # text tokenizers
           'data.sft'),                       # QA fine-tuning examples (data/qa.py)
    'vit': ('train.image_size', 'train.label_smoothing',  # classification training
            'eval.image_sizes', 'eval.mode',  # resolution sweep
            'model.patch_size', 'model.drop_path',        # ViT backbone
            'data.augment', 'data.flip', 'data.recipe', 'data.eval_transform',
            'data.timm'),                     # image augmentation recipes (data/augment.py)
}


def _dataclass_fields(module: str, name: str) -> set[str]:
  import importlib  # pylint: disable=g-import-not-at-top
  return {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}


# Sections consumed whole by a dataclass (`from_config` / `_dataclass_from` map each key to
# the field of that name and reject unknown keys): declared keys must be fields of it.
# Fields passed by the code instead of the config are listed as `extra`.
DATACLASS_SECTIONS = {
    ('lm', 'model'): (('seqpe_jax.gpt', 'GPTConfig'), {'vocab_size'}),
    ('vit', 'model'): (('seqpe_jax.vit', 'ViTConfig'), {'num_classes'}),
    ('vit', 'data.timm'): (('seqpe_jax.data.augment', 'AugmentConfig'), set()),
    ('lm', 'data.sft'): (('seqpe_jax.data.qa', 'SFTConfig'), set()),
}

# Read dynamically, not by a name the scan can see.
DYNAMIC = {
    'pe': 'posenc.PEConfig.from_config flattens every `config.pe.<type>.*` group into '
          'dataclass fields (the PE registry refactor replaces this; its test covers it)',
}


# ---------------------------------------------------------------------------- the scan

Path = tuple[str, ...]


def _str_tuple(node: ast.AST) -> tuple[str, ...] | None:
  if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
      isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
    return tuple(e.value for e in node.elts)
  return None


@dataclasses.dataclass
class _Func:
  node: ast.FunctionDef
  skip_first: bool  # a method called on an instance / class (self, cls)
  module_consts: dict[str, tuple[str, ...]]
  cls: str | None
  params: dict[str, set[Path]] = dataclasses.field(default_factory=dict)


class _Scan:
  """Config reads of the package: `reads[path] = ['file:line', ...]`."""

  def __init__(self, files: Iterable[pathlib.Path]):
    self.funcs: dict[str, list[_Func]] = {}
    self.reads: dict[Path, list[str]] = {}
    self._file = ''
    trees = []
    for path in files:
      tree = ast.parse(path.read_text(), str(path))
      consts = {t.id: v for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)
                if (v := _str_tuple(n.value)) is not None}
      trees.append((path, tree, consts))
      self._collect(tree, consts, cls=None)
    for _ in range(12):  # bindings through calls, to a fixed point
      before = self._bindings()
      self.reads = {}
      for path, tree, consts in trees:
        self._file = str(path.relative_to(PACKAGE.parent))
        self._scope(tree.body, {}, consts)
        for funcs in self.funcs.values():
          for f in funcs:
            if f.module_consts is consts:
              env = {k: set(v) for k, v in f.params.items()}
              for a in f.node.args.args + f.node.args.kwonlyargs:
                if a.arg in ROOT_NAMES:
                  env.setdefault(a.arg, set()).add(())
                if a.arg in SECTION_PARAMS:
                  env.setdefault(a.arg, set()).add(SECTION_PARAMS[a.arg])
              self._scope(f.node.body, env, consts)
      if self._bindings() == before:
        break

  def _bindings(self):
    return {(n, i): {k: frozenset(v) for k, v in f.params.items()}
            for n, fs in self.funcs.items() for i, f in enumerate(fs)}

  def _collect(self, tree: ast.AST, consts, cls: str | None) -> None:
    for node in ast.iter_child_nodes(tree):
      if isinstance(node, ast.ClassDef):
        self._collect(node, consts, node.name)
      elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        decorators = {getattr(d, 'id', getattr(d, 'attr', '')) for d in node.decorator_list}
        skip = cls is not None and 'staticmethod' not in decorators
        f = _Func(node, skip, consts, cls)
        self.funcs.setdefault(node.name, []).append(f)
        if cls is not None and node.name == '__init__':
          self.funcs.setdefault(cls, []).append(f)
        self._collect(node, consts, None)

  # ------------------------------------------------------------------ expressions
  def _read(self, path: Path, node: ast.AST) -> None:
    self.reads.setdefault(path, []).append(f'{self._file}:{node.lineno}')

  def _resolve(self, node: ast.AST, env) -> set[Path]:
    """The config paths `node` may evaluate to (recording the reads on the way)."""
    if isinstance(node, ast.Name):
      return set(env.get(node.id, ()))
    if isinstance(node, ast.Attribute):
      base = self._resolve(node.value, env)
      if node.attr == 'config' and not base:
        return {()}
      if node.attr in METHODS:
        return set()
      out = {p + (node.attr,) for p in base}
      for p in out:
        self._read(p, node)
      return out
    if isinstance(node, ast.Subscript):
      base = self._resolve(node.value, env)
      keys = self._keys(node.slice, env)
      out = {p + (k,) for p in base for k in keys}
      for p in out:
        self._read(p, node)
      return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      base = self._resolve(node.func.value, env)
      if node.func.attr == 'get' and node.args:
        out = {p + (k,) for p in base for k in self._keys(node.args[0], env)}
        for p in out:
          self._read(p, node)
        return out
      if node.func.attr == 'copy_and_resolve_references':
        return base
    return set()

  def _keys(self, node: ast.AST, env) -> tuple[str, ...]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      return (node.value,)
    if isinstance(node, ast.Name):
      return env.get(('__consts__', node.id), ())
    return ()

  # ------------------------------------------------------------------ statements
  def _bind_loop(self, target: ast.AST, it: ast.AST, env, consts) -> None:
    values = _str_tuple(it)
    if values is None and isinstance(it, ast.Name):
      values = consts.get(it.id)
    if values is not None and isinstance(target, ast.Name):
      env[('__consts__', target.id)] = values
    # `for split, field in (('train', 'train_files'), ...)`: each name takes its column.
    rows = [_str_tuple(e) for e in it.elts] if isinstance(it, (ast.Tuple, ast.List)) else []
    if (rows and all(rows) and isinstance(target, ast.Tuple)
        and all(len(r) == len(target.elts) for r in rows)):
      for i, t in enumerate(target.elts):
        if isinstance(t, ast.Name):
          env[('__consts__', t.id)] = tuple(r[i] for r in rows)

  def _scope(self, body: list[ast.stmt], env, consts) -> None:
    for stmt in body:
      for node in ast.walk(stmt):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          continue
        if isinstance(node, ast.For):
          self._bind_loop(node.target, node.iter, env, consts)
        elif isinstance(node, ast.comprehension):
          self._bind_loop(node.target, node.iter, env, consts)
        elif isinstance(node, ast.Assign):
          self._assign(node.targets, node.value, env)
        elif isinstance(node, ast.NamedExpr):
          self._assign([node.target], node.value, env)
      for node in ast.walk(stmt):
        if isinstance(node, ast.Call):
          self._call(node, env)
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
          self._resolve(node, env)

  def _assign(self, targets, value, env) -> None:
    for target in targets:
      if isinstance(target, ast.Name):
        paths = self._resolve(value, env)
        if paths:
          env[target.id] = paths
        else:  # rebound to something else (`cfg = cls(**kwargs)`)
          env.pop(target.id, None)
      elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        for t, v in zip(target.elts, value.elts):
          self._assign([t], v, env)

  def _call(self, node: ast.Call, env) -> None:
    self._resolve(node, env)
    name = (node.func.id if isinstance(node.func, ast.Name) else
            node.func.attr if isinstance(node.func, ast.Attribute) else None)
    if name not in self.funcs:
      return
    on_instance = isinstance(node.func, ast.Attribute)
    owner = node.func.value if on_instance else None
    owner = getattr(owner, 'id', getattr(owner, 'attr', None))  # `PEConfig.from_config(...)`
    classes = {f.cls for fs in self.funcs.values() for f in fs}
    for f in self.funcs[name]:
      if owner in classes and f.cls != owner and f.node.name != '__init__':
        continue
      params = [a.arg for a in f.node.args.posonlyargs + f.node.args.args]
      # self/cls is implicit for `obj.method(...)`, `Class(...)` and `cls.method(...)`
      if f.skip_first and (on_instance or f.node.name == '__init__'):
        params = params[1:]
      bound = list(zip(params, node.args)) + [(k.arg, k.value) for k in node.keywords if k.arg]
      for param, arg in bound:
        paths = self._resolve(arg, env)
        if paths:
          f.params.setdefault(param, set()).update(paths)


# ---------------------------------------------------------------------------- the test

def _declared(config: ml_collections.ConfigDict, prefix: Path = ()) -> set[Path]:
  out = set()
  for k, v in config.items():
    out.add(prefix + (k,))
    if isinstance(v, ml_collections.ConfigDict):
      out |= _declared(v, prefix + (k,))
  return out


def _leaves(config: ml_collections.ConfigDict, prefix: Path = ()) -> set[Path]:
  out = set()
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out |= _leaves(v, prefix + (k,))
    else:
      out.add(prefix + (k,))
  return out


def _under(path: Path, prefixes: Iterable[str]) -> bool:
  dotted = '.'.join(path)
  return any(dotted == p or dotted.startswith(p + '.') for p in prefixes)


def _dataclass_prefix(family: str, path: Path) -> str | None:
  for (fam, prefix) in DATACLASS_SECTIONS:
    if fam == family and _under(path, [prefix]) and '.'.join(path) != prefix:
      return prefix
  return None


class ConfigKeysTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.scan = _Scan(sorted(PACKAGE.rglob('*.py')))
    cls.declared = {f: {n: _declared(g()) for n, g in gs.items()} for f, gs in FAMILIES.items()}
    cls.leaves = {f: {n: _leaves(g()) for n, g in gs.items()} for f, gs in FAMILIES.items()}

  def test_the_scan_sees_the_known_reads(self):
    # Guards the scan itself: reads through aliases, calls, `.get`, loops over constants.
    for dotted in ('train.steps', 'optim.warmup_init_lr', 'optim.schedule', 'mesh.num_devices',
                   'mesh.fsdp', 'data.tfds_data_dir', 'data.name', 'aux.num_pivots',
                   'train.keep_checkpoints', 'eval.checkpoint', 'data.spm_model_type'):
      self.assertIn(tuple(dotted.split('.')), self.scan.reads, dotted)

  def test_every_read_key_is_declared(self):
    everywhere = set().union(*(d for fam in self.declared.values() for d in fam.values()))
    values = set().union(*(l for fam in self.leaves.values() for l in fam.values()))
    missing = {'.'.join(p): where[:3] for p, where in self.scan.reads.items()
               if p not in everywhere and not _under(p, DYNAMIC)
               and p[:-1] not in values}  # `data.name.startswith`: a method of the value
    self.assertEqual(missing, {}, 'read by the code but declared in no shipped config')

  def test_each_family_declares_the_same_keys(self):
    for family, configs in self.declared.items():
      first_name, first = next(iter(configs.items()))
      for name, keys in configs.items():
        self.assertEqual(sorted('.'.join(k) for k in keys ^ first), [],
                         f'{name} vs {first_name}: keys declared by one only')

  def test_keys_of_one_family_are_listed_and_read_keys_of_shared_sections_are_everywhere(self):
    lm, vit = (set().union(*self.declared[f].values()) for f in ('lm', 'vit'))
    for family, own, other in (('lm', lm, vit), ('vit', vit, lm)):
      only = {'.'.join(p) for p in own - other if not _under(p, DYNAMIC)}
      unlisted = sorted(k for k in only if not _under(k.split('.'), FAMILY_ONLY[family]))
      self.assertEqual(unlisted, [], f'declared for {family} only; declare them for both '
                       'task families, or list them in FAMILY_ONLY')
      stale = sorted(p for p in FAMILY_ONLY[family] if tuple(p.split('.')) not in own - other)
      self.assertEqual(stale, [], f'FAMILY_ONLY[{family!r}] entries not {family}-only')

  def test_every_declared_key_is_read(self):
    for family, configs in self.leaves.items():
      for name, leaves in configs.items():
        unread = []
        for path in sorted(leaves):
          if path in self.scan.reads or _under(path, DYNAMIC):
            continue
          prefix = _dataclass_prefix(family, path)
          if prefix is not None:
            (module, cls), extra = DATACLASS_SECTIONS[(family, prefix)]
            if path[len(prefix.split('.'))] in _dataclass_fields(module, cls) - extra:
              continue
          unread.append('.'.join(path))
        self.assertEqual(unread, [], f'{name}: declared but never read')

  def test_dataclass_sections_declare_every_field(self):
    for (family, prefix), ((module, cls), extra) in DATACLASS_SECTIONS.items():
      for name, keys in self.declared[family].items():
        depth = len(prefix.split('.'))
        have = {p[depth] for p in keys if len(p) == depth + 1 and '.'.join(p[:depth]) == prefix}
        fields = _dataclass_fields(module, cls) - extra
        self.assertEqual(sorted(fields - have), [], f'{name}.{prefix}: fields not declared')
        self.assertEqual(sorted(have - fields), [], f'{name}.{prefix}: keys that are no field')

  def test_family_only_keys_are_declared_by_every_config_of_the_family(self):
    for family, configs in self.declared.items():
      for name, keys in configs.items():
        for dotted in FAMILY_ONLY[family]:
          self.assertIn(tuple(dotted.split('.')), keys, f'{name}: {dotted}')


def _show(scan: _Scan) -> Any:  # for debugging: python -c 'from tests import config_keys_test
  return {'.'.join(p): w for p, w in sorted(scan.reads.items())}  # as t; print(t._show(...))'


if __name__ == '__main__':
  absltest.main()
