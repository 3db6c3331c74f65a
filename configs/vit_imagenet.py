r"""The paper's vision recipe: ViT-S/16 (or B/16) + SeqPE on ImageNet-1k (accelerators).

Trained at 224 px (14 x 14 patches), evaluated at 224..672 px in `extend`
mode; SeqPE with attn_mul and a per-layer pe_qk, 2 digits per axis (grids up
to 100 x 100), separate clipping (method doc §7.3, §8.3, §9.2). Needs the TFDS
`imagenet2012` dataset prepared in ArrayRecord format (`tfds build
imagenet2012 --file_format=array_record` with the manual download).
Evaluation uses timm's ImageNet transform (short side 256/224 S bicubic,
centre crop S). The paper's training recipe (timm: RandAugment, random erasing,
mixup/cutmix) is `--config.data.recipe=timm`; it is not the
default yet because the mixed targets arrive as batch['label_probs'], which the
classification loss must consume (with the simple recipe expect lower top-1).

  python -m seqpe_jax.main --config=configs/vit_imagenet.py --workdir=$WORKDIR
  python -m seqpe_jax.main --config=configs/vit_imagenet.py:variant=B/16 --workdir=$WORKDIR
  bash launch/tpu_pod.sh $TPU_NAME $ZONE --config=configs/vit_imagenet.py --workdir=/mnt/shared/vit
Baselines: `:pe=learned` (bicubic interpolation), `:pe=sincos2d`, `:pe=rope2d`, `:pe=rope_mixed`.
"""

import ml_collections

from configs import common, vit_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, pe='seqpe', variant='S/16', epochs=400)
  c = vit_cifar10.get_config(f'pe={a.pe},size=224')
  size = {'S/16': dict(num_layers=12, width=384, num_heads=6),
          'B/16': dict(num_layers=12, width=768, num_heads=12)}
  if a.variant not in size:
    raise ValueError(f'unknown variant {a.variant!r}; use S/16 or B/16')
  c.seed = 10086
  c.model.update(patch_size=16, dtype='bfloat16', attention_impl='fused', **size[a.variant])
  c.pe = common.pe_config(a.pe, apply='attn_mul', pe_qk='multi', max_digits=2, width=384, heads=6,
                          dropout=0.3 if a.variant == 'B/16' else 0.1)
  c.pe.sinusoidal.scale = 1.0
  c.pe.rope.theta = 100.0
  c.aux = common.aux_config(max_position=100, num_pivots=32, num_candidates=64,
                            mode_probs=(0.5, 0.3, 0.2), hard_ratio=0.2, window=17, ood_items=32,
                            ood_points=64, shift_sets=32)
  steps_per_epoch = 1_281_167 // 1024
  c.train.update(steps=a.epochs * steps_per_epoch, batch_size=1024, image_size=224,
                 log_every=100, checkpoint_every=5000, keep_checkpoints=3)
  c.optim = common.optim_config(lr=1.2e-3, warmup_steps=20 * steps_per_epoch, weight_decay=0.05,
                                b2=0.999, clip_norm=5.0, pe_clip_norm=5.0,
                                min_lr_ratio=1e-5 / 1.2e-3)
  c.data.update(name='tfds:imagenet2012', eval_split='validation', max_eval_examples=0,
                eval_transform='imagenet')
  c.eval.update(image_sizes=(224, 256, 320, 384, 448, 512, 640, 672), splits=('validation',),
                batch_size=256)
  return c
