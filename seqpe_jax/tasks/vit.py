"""Image classification: a ViT on a patch grid, (soft-)label cross-entropy, resolution sweeps."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from seqpe_jax import posenc
from seqpe_jax.errors import ConfigError
from seqpe_jax.posenc import PEOutput
from seqpe_jax.tasks.base import Task, _dataclass_from, register
from seqpe_jax.vit import ViT, ViTConfig, patch_grid


@register('vit')
class ViTTask(Task):
  """Classification at `train.image_size` (positions: the row-major patch grid)."""

  data_dim = 2
  pe_types = posenc.VIT_PE_TYPES
  units = 'images'
  default_evaluations = ('vit_resolution',)
  train_size_key = 'train_image_size'

  @classmethod
  def check_data_config(cls, data_cfg: ml_collections.ConfigDict) -> None:
    from seqpe_jax import validate  # pylint: disable=g-import-not-at-top
    validate.check_image_data(data_cfg)

  @classmethod
  def build_data(cls, config: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> Any:
    from seqpe_jax.data import vision  # pylint: disable=g-import-not-at-top
    return vision.build_image_data(config.data, image_size=int(config.train.image_size),
                                   batch_size=batch_size, seed=seed,
                                   process_index=process_index, process_count=process_count)

  @classmethod
  def from_data(cls, config: ml_collections.ConfigDict, data: Any, data_parallel: int = 1
                ) -> 'ViTTask':
    return cls(config, num_classes=data.num_classes, channels=data.channels,
               data_parallel=data_parallel)

  def training_grid(self, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    size = int(config.train.image_size)
    return patch_grid((size, size), config.model.patch_size)

  @property
  def train_what(self) -> str:
    return (f'train.image_size={self.config.train.image_size} '
            f'(patch grid {self.train_grid})')

  @property
  def train_size(self) -> int:
    return int(self.config.train.image_size)

  def build_model(self, config: ml_collections.ConfigDict, *, vocab_size: int,
                  num_classes: int) -> ViT:
    del vocab_size
    self._check_soft_targets(config)
    return ViT(_dataclass_from(ViTConfig, config.model, num_classes=num_classes), self.pe,
               train_image_size=int(config.train.image_size))

  @staticmethod
  def _check_soft_targets(config: ml_collections.ConfigDict) -> None:
    """Mixup / cutmix targets arrive smoothed (`label_probs`): a second smoothing is refused."""
    from seqpe_jax.data import augment  # pylint: disable=g-import-not-at-top
    d = config.data
    if not (d.get('augment', True) and d.get('recipe', 'simple') == 'timm'):
      return
    mixes = augment.AugmentConfig.from_config(d.get('timm')).mixes
    if mixes and float(config.train.get('label_smoothing', 0.0)) > 0:
      raise ConfigError('train.label_smoothing must be 0 with data.recipe=timm and mixup / '
                        'cutmix on: their targets already carry '
                        'data.timm.mixup_label_smoothing')

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    s = int(self.config.train.image_size)
    return {'images': np.zeros((batch_size, s, s, self.channels), np.float32),
            'labels': np.zeros((batch_size,), np.int32)}

  def model_input(self, batch: dict) -> jax.Array:
    return batch['images']

  def encode(self, params, positions_PxNxd: jax.Array, grid_shape: tuple[int, ...] | None = None,
             aux_Mxd: jax.Array | None = None, *, mode: str = 'extend',
             deterministic: bool = True, rng: jax.Array | None = None) -> PEOutput:
    rngs = {'dropout': rng} if rng is not None else {}
    grid_shape = grid_shape or self.train_grid
    return self.model.apply({'params': params}, positions_PxNxd, tuple(grid_shape), aux_Mxd,
                            mode=mode, deterministic=deterministic, rngs=rngs,
                            method=self.model.encode_positions)

  def task_loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    if 'label_probs' in batch:  # mixup / cutmix soft targets, already label-smoothed
      targets = batch['label_probs']
    else:
      smoothing = float(self.config.train.get('label_smoothing', 0.0))
      targets = jax.nn.one_hot(batch['labels'], logits.shape[-1])
      targets = targets * (1 - smoothing) + smoothing / logits.shape[-1]
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = (logits.argmax(-1) == batch['labels']).mean()
    return loss, {'accuracy': acc}

  def validation(self, params: Any, mesh, data: Any) -> tuple[dict[str, float], float]:
    """Top-1 at the training image size (the official model selection: best at 224)."""
    from seqpe_jax.evaluators import vit_resolution  # pylint: disable=g-import-not-at-top
    config = self.config
    size = int(config.train.image_size)
    row = vit_resolution.sweep_point(self, params, mesh,
                                     data.eval_batches(config.data.eval_split, size), size,
                                     'extend')
    return {'val_top1': row['top1']}, -row['top1']

  def probe_split(self, data: Any, split: str) -> None:
    next(iter(data.eval_batches(split, int(self.config.train.image_size))), None)
