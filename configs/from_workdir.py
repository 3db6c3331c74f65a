r"""The config recorded in a run directory (`<workdir>/config.json`), e.g. a converted one.

  python -m seqpe_jax.main --config=configs/from_workdir.py:runs/official_wt103 \
      --workdir=runs/official_wt103 --mode=eval [--config.eval.lengths='(512,1024)']

JSON lists come back as tuples, so `--config.eval.*` overrides type-check as usual.
"""

import json
import pathlib

import ml_collections


def _tuples(x):
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if not arg:
    raise ValueError('give the run directory: --config=configs/from_workdir.py:<workdir>')
  path = pathlib.Path(arg)
  path = path / 'config.json' if path.is_dir() else path
  if not path.is_file():
    raise ValueError(f'{path} not found (a run directory holds config.json)')
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
