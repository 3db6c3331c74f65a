"""timm's ImageNet training recipe on the host (numpy + Pillow), seeded by a Generator.

The official SeqPE vision code trains with timm (DeiT-style) augmentation:
RandomResizedCrop (bicubic) → horizontal flip → RandAugment `rand-m9-mstd0.5-inc1`
→ normalise → RandomErasing (p=0.25, per-pixel noise) per image, and batch-level
Mixup(0.8)/CutMix(1.0) with label smoothing 0.1 on the soft targets. Colour jitter
is off: timm disables it whenever RandAugment is on. Evaluation resizes the short
side to floor(S / crop_pct) (bicubic) and centre-crops S.

The ops mirror timm's Pillow code (`timm/data/auto_augment.py`, `random_erasing.py`,
`mixup.py`, `transforms.py`) but draw every random number from the numpy Generator
they are given, so a grain `random_map` seeded by (seed, index) makes them
reproducible and resumable. Python's `random` is never used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from seqpe_jax.errors import ConfigError

_BICUBIC = Image.Resampling.BICUBIC
_LEVEL_DENOM = 10.0  # RandAugment magnitudes live in [0, 10].


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The timm recipe's knobs (`config.data.timm.*`); defaults are DeiT/timm ImageNet."""

  randaugment: str = 'rand-m9-mstd0.5-inc1'  # '' disables RandAugment
  re_prob: float = 0.25                      # random erasing probability
  re_mode: str = 'pixel'                     # pixel | rand | const (timm's modes)
  mixup_alpha: float = 0.8                   # Beta(a, a) for mixup; 0 disables
  cutmix_alpha: float = 1.0                  # Beta(a, a) for cutmix; 0 disables
  mixup_prob: float = 1.0                    # probability a batch is mixed at all
  mixup_switch_prob: float = 0.5             # cutmix instead of mixup when both are on
  mixup_label_smoothing: float = 0.1         # smoothing inside the mixed soft targets
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  hflip: float = 0.5
  crop_pct: float = 0.875                    # eval: resize to floor(S / crop_pct), crop S

  @classmethod
  def from_config(cls, cfg=None) -> 'AugmentConfig':
    """From a `config.data.timm` ConfigDict/dict (missing keys keep the defaults)."""
    cfg = cfg or {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg.keys()) - names)
    if unknown:
      raise ConfigError(f'unknown config.data.timm option(s): {", ".join(unknown)}')
    kwargs = {f.name: cfg.get(f.name, f.default) for f in dataclasses.fields(cls)}
    for k in ('crop_scale', 'crop_ratio'):
      kwargs[k] = tuple(float(v) for v in kwargs[k])
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg

  @property
  def mixes(self) -> bool:
    return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

  def validate(self) -> None:
    for name in ('re_prob', 'mixup_prob', 'mixup_switch_prob', 'hflip'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f'config.data.timm.{name} must be in [0, 1], got {getattr(self, name)}')
    if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
      raise ConfigError(f'config.data.timm.mixup_alpha/cutmix_alpha must be >= 0, got '
                        f'{self.mixup_alpha}/{self.cutmix_alpha}')
    if not 0.0 <= self.mixup_label_smoothing < 1.0:
      raise ConfigError('config.data.timm.mixup_label_smoothing must be in [0, 1), got '
                        f'{self.mixup_label_smoothing}')
    if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
      raise ConfigError(f'config.data.timm.crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, '
                        f'got {self.crop_scale}')
    if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ConfigError(f'config.data.timm.crop_ratio must be (lo, hi) with 0 < lo <= hi, got '
                        f'{self.crop_ratio}')
    if not 0 < self.crop_pct <= 1:
      raise ConfigError(f'config.data.timm.crop_pct must be in (0, 1], got {self.crop_pct}')
    if self.re_mode not in ('pixel', 'rand', 'const'):
      raise ConfigError('config.data.timm.re_mode must be pixel, rand or const, got '
                        f'{self.re_mode!r}')
    if self.randaugment:
      parse_randaugment(self.randaugment)


# ----------------------------------------------------------------------------
# Array/PIL helpers.
# ----------------------------------------------------------------------------


def as_hwc(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W] / [H, W, 1|3|4] → [H, W, 1|3] (alpha dropped)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 4:
    image = image[..., :3]
  return image


def _to_pil(image_HxWxC: np.ndarray) -> Image.Image:
  image = as_hwc(image_HxWxC)
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(img: Image.Image) -> np.ndarray:
  out = np.asarray(img)
  return out[..., None] if out.ndim == 2 else out


def fill_colour(mean: tuple[float, ...]) -> tuple[int, ...]:
  """timm's `img_mean` fill: the dataset mean as uint8 per channel."""
  return tuple(min(255, round(255 * m)) for m in mean)


# ----------------------------------------------------------------------------
# Geometry: random resized crop, flip, ImageNet eval resize.
# ----------------------------------------------------------------------------


def crop_params(height: int, width: int, rng: np.random.Generator,
                scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, h, w) of timm's RandomResizedCrop: 10 tries, then a centre crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = rng.uniform(*scale) * area
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:  # w, h > 0: timm could crop 0 px of a tiny image
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """uint8 [H, W, C] → [size, size, C]: a random area/aspect crop, bicubic-resized."""
  img = as_hwc(img)
  top, left, h, w = crop_params(img.shape[0], img.shape[1], rng, scale, ratio)
  pil = _to_pil(img).crop((left, top, left + w, top + h))
  return _from_pil(pil.resize((size, size), _BICUBIC))


def random_hflip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """Mirrors left-right with probability p."""
  return img[:, ::-1] if rng.random() < p else img


def imagenet_eval_resize(img: np.ndarray, size: int, crop_pct: float = 0.875) -> np.ndarray:
  """timm eval: short side to floor(size / crop_pct) (bicubic), centre crop [size, size, C]."""
  img = as_hwc(img)
  h, w = img.shape[:2]
  short = math.floor(size / crop_pct)
  # torchvision Resize(int): the long side is truncated, not rounded.
  new_h, new_w = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
  out = img
  if (new_h, new_w) != (h, w):
    out = _from_pil(_to_pil(img).resize((new_w, new_h), _BICUBIC))
  # torchvision CenterCrop rounds the offset (Python round: half to even).
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.ascontiguousarray(out[top:top + size, left:left + size])


# ----------------------------------------------------------------------------
# RandAugment (timm 'increasing' op set).
# ----------------------------------------------------------------------------


def _negate(v: float, rng: np.random.Generator) -> float:
  return -v if rng.random() > 0.5 else v


def _affine(img: Image.Image, matrix: tuple[float, ...], fill) -> Image.Image:
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=_BICUBIC,
                       fillcolor=fill)


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
  if bits <= 0:  # magnitude 10: older Pillow masked every bit (black); Pillow >= 10 refuses 0
    return img.point([0] * 256 * len(img.getbands()))
  return img if bits >= 8 else ImageOps.posterize(img, bits)


def _enhance(cls) -> Callable:
  return lambda img, m, rng, fill: cls(img).enhance(
      1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng))


# name → fn(PIL image, magnitude in [0, 10], rng, fill) with timm's level→argument maps.
RAND_INCREASING_OPS: dict[str, Callable] = {
    'AutoContrast': lambda img, m, rng, fill: ImageOps.autocontrast(img),
    'Equalize': lambda img, m, rng, fill: ImageOps.equalize(img),
    'Invert': lambda img, m, rng, fill: ImageOps.invert(img),
    'Rotate': lambda img, m, rng, fill: img.rotate(
        _negate(m / _LEVEL_DENOM * 30.0, rng), resample=_BICUBIC, fillcolor=fill),
    'PosterizeIncreasing': lambda img, m, rng, fill: _posterize(
        img, 4 - int(m / _LEVEL_DENOM * 4)),
    'SolarizeIncreasing': lambda img, m, rng, fill: ImageOps.solarize(
        img, 256 - int(m / _LEVEL_DENOM * 256)),
    'SolarizeAdd': lambda img, m, rng, fill: _solarize_add(img, int(m / _LEVEL_DENOM * 110)),
    'ColorIncreasing': _enhance(ImageEnhance.Color),
    'ContrastIncreasing': _enhance(ImageEnhance.Contrast),
    'BrightnessIncreasing': _enhance(ImageEnhance.Brightness),
    'SharpnessIncreasing': _enhance(ImageEnhance.Sharpness),
    'ShearX': lambda img, m, rng, fill: _affine(
        img, (1, _negate(m / _LEVEL_DENOM * 0.3, rng), 0, 0, 1, 0), fill),
    'ShearY': lambda img, m, rng, fill: _affine(
        img, (1, 0, 0, _negate(m / _LEVEL_DENOM * 0.3, rng), 1, 0), fill),
    'TranslateXRel': lambda img, m, rng, fill: _affine(
        img, (1, 0, _negate(m / _LEVEL_DENOM * 0.45, rng) * img.size[0], 0, 1, 0), fill),
    'TranslateYRel': lambda img, m, rng, fill: _affine(
        img, (1, 0, 0, 0, 1, _negate(m / _LEVEL_DENOM * 0.45, rng) * img.size[1]), fill),
}


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  prob: float = 0.5  # per chosen op


@functools.lru_cache(maxsize=16)
def parse_randaugment(spec: str) -> RandAugmentSpec:
  """timm's config string, e.g. 'rand-m9-mstd0.5-inc1' (keys m, n, mstd, p, inc)."""
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ConfigError(f"config.data.timm.randaugment must start with 'rand-', got {spec!r}")
  fields, increasing = {}, False
  for part in parts[1:]:
    key = next((k for k in ('mstd', 'inc', 'm', 'n', 'p') if part.startswith(k)), None)
    try:
      value = float(part[len(key):]) if key else None
    except ValueError:
      value = None
    if value is None:
      raise ConfigError(f'cannot parse {part!r} of config.data.timm.randaugment {spec!r}; '
                        "expected e.g. 'rand-m9-mstd0.5-inc1'")
    if key == 'mstd' and value > 100:  # timm: mstd > 100 means magnitude ~ U(0, m)
      value = float('inf')
    increasing = bool(value) if key == 'inc' else increasing
    name = {'m': 'magnitude', 'n': 'num_ops', 'mstd': 'magnitude_std', 'p': 'prob'}.get(key)
    if name:
      fields[name] = int(value) if key == 'n' else value
  if not increasing:
    raise ConfigError(f'config.data.timm.randaugment {spec!r}: only the increasing op set is '
                      "implemented; add '-inc1'")
  return RandAugmentSpec(**fields)


def rand_augment(img: np.ndarray, rng: np.random.Generator, fill: tuple[int, ...],
                 spec: RandAugmentSpec = RandAugmentSpec(),
                 ops: tuple[str, ...] | None = None) -> np.ndarray:
  """timm RandAugment on uint8 [H, W, C]: `num_ops` ops drawn with replacement, each
  applied with prob `prob` at magnitude N(m, mstd) clipped to [0, 10]."""
  names = tuple(RAND_INCREASING_OPS) if ops is None else ops
  pil = _to_pil(img)
  fill_value = fill[0] if pil.mode == 'L' else tuple(fill)
  for k in rng.integers(0, len(names), size=spec.num_ops):
    if spec.prob < 1.0 and rng.random() > spec.prob:
      continue
    m = spec.magnitude
    if spec.magnitude_std == float('inf'):
      m = rng.uniform(0, m)
    elif spec.magnitude_std > 0:
      m = rng.normal(m, spec.magnitude_std)
    m = min(max(m, 0.0), _LEVEL_DENOM)
    pil = RAND_INCREASING_OPS[names[k]](pil, m, rng, fill_value)
  return _from_pil(pil)


# ----------------------------------------------------------------------------
# Random erasing (on normalised float images).
# ----------------------------------------------------------------------------


def erase_box(height: int, width: int, rng: np.random.Generator, min_area: float = 0.02,
              max_area: float = 1 / 3, min_aspect: float = 0.3
              ) -> tuple[int, int, int, int] | None:
  """(top, left, h, w) of timm's erasing box, or None if 10 tries do not fit."""
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target_area = rng.uniform(min_area, max_area) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if w < width and h < height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return None


def random_erase(x_HxWxC: np.ndarray, rng: np.random.Generator, prob: float = 0.25,
                 mode: str = 'pixel', min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3) -> np.ndarray:
  """timm RandomErasing (one box): with prob `prob` fills a box with N(0, 1) noise per
  pixel ('pixel'), per channel ('rand') or zeros ('const'), in normalised space."""
  if rng.random() > prob:
    return x_HxWxC
  h_img, w_img, c = x_HxWxC.shape
  box = erase_box(h_img, w_img, rng, min_area, max_area, min_aspect)
  if box is None:
    return x_HxWxC
  top, left, h, w = box
  shape = {'pixel': (h, w, c), 'rand': (1, 1, c), 'const': (1, 1, 1)}[mode]
  noise = np.zeros(shape, np.float32) if mode == 'const' else rng.standard_normal(shape)
  out = np.array(x_HxWxC, copy=True)
  out[top:top + h, left:left + w] = noise.astype(out.dtype)
  return out


# ----------------------------------------------------------------------------
# Batch mixup / cutmix.
# ----------------------------------------------------------------------------


class Mixed(NamedTuple):
  images: np.ndarray        # [B, H, W, C], same dtype as the input
  label_probs: np.ndarray   # float32 [B, K], rows sum to 1
  lam: float                # weight of each image's own label (box-corrected for cutmix)
  box: tuple[int, int, int, int] | None  # cutmix (y0, y1, x0, x1), else None


def smooth_one_hot(labels_B: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
  """timm's smoothed one-hot: off = s / K, on = 1 - s + s / K (float32 [B, K])."""
  off = smoothing / num_classes
  out = np.full((len(labels_B), num_classes), off, np.float32)
  out[np.arange(len(labels_B)), labels_B] = 1.0 - smoothing + off
  return out


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """timm `rand_bbox`: a box of side sqrt(1 - lam) around a uniform centre, clipped."""
  ratio = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * ratio), int(width * ratio)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
  x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
  return int(y0), int(y1), int(x0), int(x1)


def mixup_cutmix(images_BxHxWxC: np.ndarray, labels_B: np.ndarray, num_classes: int,
                 rng: np.random.Generator, *, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.1) -> Mixed:
  """timm `Mixup(mode='batch', correct_lam=True)`: mixes the batch with its reverse.

  One lam per batch: cutmix (prob `switch_prob` when both alphas are on) pastes a
  box of the reversed batch and sets lam = 1 - box area / image area; mixup blends
  lam * x + (1 - lam) * x[::-1]. Targets: lam * smooth(y) + (1 - lam) * smooth(y[::-1]).
  An odd batch is allowed (its middle image pairs with itself; timm asserts even).
  """
  lam, use_cutmix, box = 1.0, False, None
  if (mixup_alpha > 0 or cutmix_alpha > 0) and rng.random() < prob:
    if mixup_alpha > 0 and cutmix_alpha > 0:
      use_cutmix = bool(rng.random() < switch_prob)
    else:
      use_cutmix = cutmix_alpha > 0
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
  x = images_BxHxWxC
  if lam != 1.0:
    if use_cutmix:
      h, w = x.shape[1:3]
      box = cutmix_box(h, w, lam, rng)
      y0, y1, x0, x1 = box
      x = np.array(x, copy=True)
      x[:, y0:y1, x0:x1] = images_BxHxWxC[::-1, y0:y1, x0:x1]
      lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
      x = (x * np.float32(lam) + x[::-1] * np.float32(1.0 - lam)).astype(x.dtype)
  y = smooth_one_hot(np.asarray(labels_B), num_classes, label_smoothing)
  probs = (y * np.float32(lam) + y[::-1] * np.float32(1.0 - lam)).astype(np.float32)
  return Mixed(x, probs, lam, box)


# ----------------------------------------------------------------------------
# The per-image training transform.
# ----------------------------------------------------------------------------


def timm_train_image(img: np.ndarray, size: int, rng: np.random.Generator,
                     mean: tuple[float, ...], std: tuple[float, ...],
                     cfg: AugmentConfig = AugmentConfig(), flip: bool = True) -> np.ndarray:
  """uint8 [H, W, C] → float32 [size, size, C]: crop, flip, RandAugment, normalise, erase."""
  image = random_resized_crop(img, size, rng, cfg.crop_scale, cfg.crop_ratio)
  if flip:
    image = random_hflip(image, rng, cfg.hflip)
  if cfg.randaugment:
    image = rand_augment(image, rng, fill_colour(mean), parse_randaugment(cfg.randaugment))
  x = image.astype(np.float32) / 255.0
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  if cfg.re_prob > 0:
    x = random_erase(x, rng, cfg.re_prob, cfg.re_mode)
  return x.astype(np.float32)
