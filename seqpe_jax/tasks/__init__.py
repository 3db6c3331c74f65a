"""Tasks: one module per task kind behind the `base.Task` interface.

`Task(config, vocab_size=...)` / `Task(config, num_classes=..., channels=...)` builds the
kind `config.task` names (`lm.LMTask`, `vit.ViTTask`); `kind_of(name)` is its class
(data builder, early checks). A new kind: a `Task` subclass `@register('<name>')` in a
new module here, imported below.
"""

from seqpe_jax.tasks.base import Task, count_params, kind_of, model_flops_per_token, register
from seqpe_jax.tasks import lm, vit  # (importing a kind registers it)
from seqpe_jax.tasks.lm import LMTask
from seqpe_jax.tasks.vit import ViTTask

__all__ = ['Task', 'LMTask', 'ViTTask', 'lm', 'vit', 'kind_of', 'register', 'count_params',
           'model_flops_per_token']
