r"""The paper's vision recipe: ViT-S/16 (or B/16) + SeqPE on ImageNet-1k (accelerators).

As the official `runs/ours_vit.sh` (method doc §7.3, §8.3, §9.2): trained at 224 px
(14 x 14 patches) for 400 epochs with timm's recipe — RandomResizedCrop + flip,
RandAugment `rand-m9-mstd0.5-inc1`, random erasing 0.25, mixup 0.8 / cutmix 1.0 with label
smoothing 0.1 — AdamW 1.2e-3 (6e-4 x 1024/512), 20 warm-up epochs from 1e-6, cosine to 1e-5,
weight decay 0.05 (0 for the SeqPE encoder), separate clipping (5.0), drop-path 0.1 for
B/16, fp32 (the official AMP level O0; `:dtype=bfloat16` to train in bf16). SeqPE with
attn_mul and a per-layer pe_qk, 2 digits per axis (grids up to 100 x 100). Evaluated with the
ImageNet transform (short side int(256/224 S) bicubic, centre crop S) at 224..672 px in
`extend` mode, on the best top-1 at 224 (validated every 5 epochs). Needs the TFDS
`imagenet2012` dataset prepared in ArrayRecord format (`tfds build imagenet2012
--file_format=array_record` with the manual download).

  python -m seqpe_jax.main --config=configs/vit_imagenet.py --workdir=$WORKDIR
  python -m seqpe_jax.main --config=configs/vit_imagenet.py:variant=B/16 --workdir=$WORKDIR
  bash launch/tpu_pod.sh $TPU_NAME $ZONE --config=configs/vit_imagenet.py --workdir=/mnt/shared/vit
Baselines: `:pe=learned` (bicubic interpolation, PyTorch's kernel), `:pe=sincos2d`,
`:pe=rope2d`, `:pe=rope_mixed`.
"""

import ml_collections

from configs import common, vit_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, pe='seqpe', variant='S/16', epochs=400, dtype='float32')
  c = vit_cifar10.get_config(f'pe={a.pe},size=224')
  size = {'S/16': dict(num_layers=12, width=384, num_heads=6, drop_path=0.0),
          'B/16': dict(num_layers=12, width=768, num_heads=12, drop_path=0.1)}
  if a.variant not in size:
    raise ValueError(f'unknown variant {a.variant!r}; use S/16 or B/16')
  c.seed = 10086
  c.model.update(patch_size=16, dtype=a.dtype, attention_impl='fused', **size[a.variant])
  c.pe = common.pe_config(a.pe, apply='attn_mul', pe_qk='multi', max_digits=2, width=384, heads=6,
                          dropout=0.3 if a.variant == 'B/16' else 0.1)
  c.pe.learned.resize = 'bicubic'
  c.pe.sinusoidal.scale = 1.0
  c.pe.rope.theta = 100.0
  # The official samplers run per GPU: 32 pivots, 32 OOD items and 32 shift sets on each of
  # its 4 GPUs, i.e. 128 of each per global step. `--config.aux.counts_per_device=True` with
  # 32/32/32 scales them with the data-parallel size instead.
  c.aux = common.aux_config(max_position=100, num_pivots=128, num_candidates=64,
                            mode_probs=(0.5, 0.3, 0.2), hard_ratio=0.2, window=17, ood_items=128,
                            ood_points=64, shift_sets=128)
  steps_per_epoch = 1_281_167 // 1024
  c.train.update(steps=a.epochs * steps_per_epoch, batch_size=1024, image_size=224,
                 log_every=100, checkpoint_every=5000, keep_checkpoints=3,
                 eval_every=5 * steps_per_epoch, keep_best=True)
  c.optim = common.optim_config(lr=1.2e-3, warmup_steps=20 * steps_per_epoch, weight_decay=0.05,
                                b2=0.999, clip_norm=5.0, pe_clip_norm=5.0,
                                min_lr_ratio=1e-5 / 1.2e-3, warmup_init_lr=1e-6)
  # timm's recipe; label smoothing 0.1 lives inside the mixup targets (`label_probs`).
  c.train.label_smoothing = 0.0
  c.data.update(name='tfds:imagenet2012', eval_split='validation', max_eval_examples=0,
                recipe='timm', eval_transform='imagenet')
  c.eval.update(image_sizes=(224, 256, 320, 384, 448, 512, 640, 672), splits=('validation',),
                batch_size=256, checkpoint='best')
  return c
