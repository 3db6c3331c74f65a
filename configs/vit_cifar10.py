r"""A CPU-sized ViT with SeqPE on real CIFAR-10 (or MNIST with `:data=mnist`).

Trains at 32 px (8x8 patches of 4) and evaluates top-1 at 32..64 px by
upsampling (resolution extrapolation, as the paper's ImageNet 224 → 672).

  python -m seqpe_jax.main --config=configs/vit_cifar10.py --workdir=runs/cifar
  python -m seqpe_jax.main --config=configs/vit_cifar10.py:pe=rope2d --workdir=runs/cifar_rope
  python -m seqpe_jax.main --config=configs/vit_cifar10.py:data=mnist,size=28 --workdir=runs/mnist
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, pe='seqpe', data='cifar10', size=32, steps=1500)
  c = ml_collections.ConfigDict()
  c.task = 'vit'
  c.seed = 0
  c.init_from = ''  # a run directory whose params start this run (fine-tuning; '' = none)
  c.model = ml_collections.ConfigDict({
      'patch_size': 4,           # image size must be divisible by it
      'num_layers': 4,
      'width': 128,
      'num_heads': 4,
      'mlp_ratio': 4,
      'gelu_approximate': True,  # MLP gelu: tanh approximation | False: exact erf (timm ViT)
      'dropout': 0.0,
      'attn_dropout': 0.0,
      'drop_path': 0.0,          # stochastic depth at the last block (timm ViT-B/16: 0.1)
      'ln_eps': 1e-6,
      'dtype': 'float32',
      'attention_impl': 'reference',
      'remat': False,
  })
  # Vision setting of the paper: attn_mul with a per-layer pe_qk, 2 digits per axis.
  c.pe = common.pe_config(a.pe, apply='attn_mul', pe_qk='multi', max_digits=2, width=64,
                          heads=2, dropout=0.1)
  c.pe.sinusoidal.scale = 1.0
  c.pe.rope.theta = 100.0
  grid = a.size // 4
  c.aux = common.aux_config(
      max_position=100, num_pivots=32, num_candidates=64, mode_probs=(0.5, 0.3, 0.2),
      hard_ratio=0.2, window=max(grid, int((5 * 64) ** 0.5)), ood_items=32, ood_points=64,
      shift_sets=32)
  c.train = ml_collections.ConfigDict({
      'steps': a.steps,
      'batch_size': 128,
      'image_size': a.size,      # training resolution (px)
      'grad_accum': 1,
      'label_smoothing': 0.1,
      'log_every': 50,
      'checkpoint_every': 500,
      'keep_checkpoints': 2,
      'async_checkpoint': True,
      'eval_every': 0,           # top-1 at train.image_size on data.eval_split every N steps
      'keep_best': False,        # keep the best-validation params in <workdir>/best/
      'nonfinite': 'stop',       # stop | skip: what a NaN/Inf loss or gradient does
      'debug_nan': '',           # test only: 'term@step,...' makes a term NaN at a step
                                 # (term: task | contrastive | ood | grads)
  })
  c.optim = common.optim_config(lr=1e-3, warmup_steps=100, weight_decay=0.05, b2=0.999,
                                clip_norm=5.0, pe_clip_norm=5.0, min_lr_ratio=0.01)
  c.data = ml_collections.ConfigDict({
      'dir': '',                 # '' = $SEQPE_DATA_DIR or ../shared/data
      'name': a.data,            # cifar10 | mnist | folder:<path> | tfds:<name>
      'tfds_data_dir': '',       # name=tfds:<name> only: TFDS data dir ('' = TFDS's default)
      'cache_dir': '',
      'num_workers': 0,
      'augment': True,           # training augmentation on/off
      'flip': 'auto',            # horizontal flip in augmentation: auto (off for MNIST digits)
                                 # | on | off
      'recipe': 'simple',        # simple (reflect-pad crop + flip) | timm (DeiT/timm ImageNet:
                                 # RRC, RandAugment, erasing, mixup/cutmix -> 'label_probs')
      'eval_transform': 'resize',  # resize (centre square, bilinear) | imagenet (short side
                                   # floor(S / crop_pct) bicubic, centre crop S)
      'timm': ml_collections.ConfigDict({  # recipe=timm only; timm/DeiT defaults
          'randaugment': 'rand-m9-mstd0.5-inc1',  # '' = off (no colour jitter either way)
          're_prob': 0.25,                 # random erasing, per-pixel N(0, 1) noise
          're_mode': 'pixel',
          'mixup_alpha': 0.8,              # 0 and cutmix_alpha 0: no mixing, no label_probs
          'cutmix_alpha': 1.0,
          'mixup_prob': 1.0,
          'mixup_switch_prob': 0.5,
          'mixup_label_smoothing': 0.1,    # inside label_probs (do not smooth them again)
          'crop_scale': (0.08, 1.0),
          'crop_ratio': (3 / 4, 4 / 3),
          'hflip': 0.5,
          'crop_pct': 0.875,               # eval_transform=imagenet: 224 / 256
      }),
      'eval_split': 'test',      # the split of train.eval_every's validation (model selection)
      'max_train_examples': 0,   # 0: all
      'max_eval_examples': 2000, # 0: all
  })
  c.eval = ml_collections.ConfigDict({
      'image_sizes': tuple(a.size * m // 4 for m in (4, 5, 6, 7, 8)),  # 1x .. 2x
      'splits': ('test',),
      'mode': 'extend',          # extend (encode the larger grid) | interpolate (resize it)
      'batch_size': 128,
      'checkpoint': 'latest',    # latest | best (the train.keep_best model)
  })
  c.evals = common.evals_config()  # extra evaluations by name (evaluators registry)
  c.mesh = common.mesh_config()
  return c
