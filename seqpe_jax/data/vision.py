"""Image classification data: MNIST, CIFAR-10, image folders and TFDS through grain.

Every source yields records {'image': uint8 [H, W, C], 'label': int}. Training
resizes to `image_size`, augments with randomness drawn from (seed, record
index) so the grain iterator state alone resumes the data exactly, and
normalises with per-dataset mean/std. Evaluation can use any size (resolution
extrapolation: train at 32 px, evaluate upsampled at 48, 64, ...).

Training recipes (`config.data.recipe`): 'simple' (reflect-pad random crop +
flip) or 'timm' (the official DeiT/timm ImageNet recipe of `augment.py`:
random resized crop, flip, RandAugment, random erasing, and batch mixup/cutmix
seeded by (seed, batch index); mixed batches also carry `label_probs`). Eval
transforms (`config.data.eval_transform`): 'resize' (centre square + bilinear)
or 'imagenet' (short side to S / crop_pct, bicubic, centre crop S).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import lzma
import pathlib
import struct
import tarfile
import zlib
from typing import Callable, Iterator

import grain
import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from seqpe_jax.data import augment as augment_lib
from seqpe_jax.data import common
from seqpe_jax.errors import ConfigError, DataError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
RECIPES = ('simple', 'timm')
EVAL_TRANSFORMS = ('resize', 'imagenet')
_MIX_STREAM = 0x6d6978  # Separates the batch-mixing seeds from the per-record ones.
# (mean, std) per channel of images scaled to [0, 1].
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASET_STATS = {
    'mnist': ((0.1307,), (0.3081,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet2012': _IMAGENET_STATS,
}


def dataset_stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Known per-dataset stats, else ImageNet's for RGB and 0.5/0.5 otherwise."""
  if name in DATASET_STATS and len(DATASET_STATS[name][0]) == channels:
    return DATASET_STATS[name]
  return _IMAGENET_STATS if channels == 3 else ((0.5,) * channels, (0.5,) * channels)


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


class ArraySource:
  """In-memory images/labels as a random-access source."""

  def __init__(self, images_NxHxWxC: np.ndarray, labels_N: np.ndarray, name: str,
               num_classes: int | None = None):
    if len(images_NxHxWxC) != len(labels_N):
      raise DataError(f'{name}: {len(images_NxHxWxC)} images but {len(labels_N)} labels')
    self.images, self.labels, self.name = images_NxHxWxC, labels_N, name
    self.channels = images_NxHxWxC.shape[-1]
    self.num_classes = num_classes or int(labels_N.max()) + 1

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {'image': self.images[index], 'label': int(self.labels[index])}


class SubsetSource:
  """`size` evenly spaced records of `source`, so a class-sorted source stays balanced."""

  def __init__(self, source, size: int | None):
    n = len(source)
    self._source = source
    self._indices = np.arange(n) if not size or size >= n else np.arange(size) * n // size
    self.name, self.channels, self.num_classes = source.name, source.channels, source.num_classes

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._source[int(self._indices[index])]


def _decode_image(data: bytes, what: str) -> np.ndarray:
  """Bytes of an image file → uint8 [H, W, 3]."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      return np.asarray(img.convert('RGB'))
  except UnidentifiedImageError as e:  # its message names a BytesIO object, not the file
    raise DataError(f'cannot decode image {what}: not an image file Pillow can read') from e
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types.
    raise DataError(f'cannot decode image {what}: {common.one_line(e)}') from e


class ImageFolderSource:
  """`<root>/<split>/<class>/*.{jpg,png}` decoded lazily (RGB); labels = sorted class names."""

  def __init__(self, root: common.PathLike, split: str):
    root = pathlib.Path(root)
    if not (root / split).is_dir():
      raise DataError(f'image folder {root / split} not found; expected '
                      '<root>/<split>/<class>/*.jpg')
    # Classes from every split so that train and test agree on indices.
    self.class_names = sorted({c.name for s in root.iterdir() if s.is_dir()
                               for c in s.iterdir() if c.is_dir()})
    self._files = [(str(f), label) for label, c in enumerate(self.class_names)
                   if (root / split / c).is_dir()
                   for f in sorted((root / split / c).iterdir())
                   if f.suffix.lower() in IMAGE_SUFFIXES]
    if not self._files:
      raise DataError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {root / split}/<class>/')
    self.name, self.channels, self.num_classes = root.name, 3, len(self.class_names)

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict:
    path, label = self._files[index]
    return {'image': _decode_image(pathlib.Path(path).read_bytes(), path), 'label': label}


def load_image_folder(root: common.PathLike, split: str) -> ImageFolderSource:
  """A random-access source over `<root>/<split>/<class>/*.{jpg,png,...}`."""
  return ImageFolderSource(root, split)


class TfdsImageSource:
  """A prepared TFDS image dataset ('image'/'label' features) as a source."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    self._source = common.tfds_source(name, split, data_dir)
    features = self._source.dataset_info.features
    self.name, self.num_classes = name, features['label'].num_classes
    self.channels = features['image'].shape[-1] or 3

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    return {'image': np.asarray(record['image']), 'label': int(record['label'])}


def _split_prefix(split: str) -> str:
  if split not in ('train', 'test'):
    raise ConfigError(f"MNIST/CIFAR-10 split must be 'train' or 'test', got {split!r}")
  return split


def _read_idx(path: pathlib.Path, magic: int, ndim: int) -> np.ndarray:
  """Reads a gzipped IDX file (uint8 payload) and checks its magic number and size."""
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'cannot decompress {path}: {common.one_line(e)}') from e
  header = 4 + 4 * ndim
  if len(data) < header or struct.unpack('>I', data[:4])[0] != magic:
    raise DataError(f'{path} is not an IDX file with magic number {magic} (corrupt?)')
  dims = struct.unpack(f'>{ndim}I', data[4:header])
  if len(data) - header != int(np.prod(dims)):
    raise DataError(f'{path} holds {len(data) - header} bytes, header says {dims} (truncated?)')
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_mnist(data_dir: common.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """MNIST from `<data_dir>/mnist/*.gz` IDX files: uint8 [N, 28, 28, 1], int32 [N]."""
  root = pathlib.Path(data_dir) / 'mnist'
  prefix = {'train': 'train', 'test': 't10k'}[_split_prefix(split)]
  names = [f'{prefix}-images-idx3-ubyte.gz', f'{prefix}-images-idx3-ubyte.RECONSTRUCTED.gz']
  images = [root / n for n in names if (root / n).is_file()]
  labels = root / f'{prefix}-labels-idx1-ubyte.gz'
  if not images or not labels.is_file():
    raise DataError(f'MNIST {split} files not found: expected {names[0]} (or '
                    f'{names[1]}) and {labels.name} in {root}')
  images_NxHxW = _read_idx(images[0], 2051, 3)
  labels_N = _read_idx(labels, 2049, 1).astype(np.int32)
  if len(images_NxHxW) != len(labels_N) or labels_N.max(initial=0) > 9:
    raise DataError(f'MNIST {split}: {len(images_NxHxW)} images vs {len(labels_N)} labels '
                    f'(max label {labels_N.max(initial=0)}) in {root}')
  return images_NxHxW[..., None], labels_N


def load_cifar10(data_dir: common.PathLike, split: str,
                 cache_dir: common.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 JPEGs → uint8 [N, 32, 32, 3], int32 [N], decoded once into a cached .npz.

  Reads `<data_dir>/cifar10/<split>/<class>/*.jpg` if extracted, else streams the
  members of `cifar10-jpg.tar.xz` (nothing is extracted to disk).
  """
  root, split = pathlib.Path(data_dir) / 'cifar10', _split_prefix(split)
  archive = root / 'cifar10-jpg.tar.xz'
  if (root / split).is_dir():
    inputs = [root / split] + sorted(p for p in (root / split).iterdir() if p.is_dir())
  elif archive.is_file():
    inputs = [archive]
  else:
    raise DataError(f'CIFAR-10 not found: expected {archive} or {root / split}/<class>/*.jpg')
  cache = pathlib.Path(cache_dir) / 'cifar10' / f'{split}-{common.fingerprint(inputs)}.npz'
  if not cache.exists():
    if inputs[0] == archive:
      classes, items = _read_cifar_archive(archive, split)
    else:
      folder = ImageFolderSource(root, split)
      classes = folder.class_names
      items = [(folder.class_names[lbl], p, folder[i]['image'])
               for i, (p, lbl) in enumerate(folder._files)]
    if not items:
      raise DataError(f'no CIFAR-10 {split} images in {inputs[0]}')
    items.sort(key=lambda x: x[:2])  # Deterministic order whatever the archive order.
    labels_N = np.asarray([classes.index(c) for c, _, _ in items], np.int32)
    images_NxHxWxC = np.stack([im for _, _, im in items])
    with common.atomic_path(cache) as tmp, open(tmp, 'wb') as f:
      np.savez(f, images=images_NxHxWxC, labels=labels_N, classes=np.asarray(classes))
  with np.load(cache) as data:
    return data['images'], data['labels']


def _read_cifar_archive(archive: pathlib.Path, split: str):
  """Class names (all splits) and (class, member, image) of `split`, streamed from the tar."""
  classes, items = set(), []
  try:
    with tarfile.open(archive, 'r:*') as tar:
      for member in tar:
        parts = member.name.split('/')
        if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
          continue
        classes.add(parts[-2])
        if parts[-3] == split:
          image = _decode_image(tar.extractfile(member).read(), f'{member.name} in {archive}')
          if image.shape != (32, 32, 3):
            raise DataError(f'{member.name} in {archive} is {image.shape}, not 32x32x3')
          items.append((parts[-2], member.name, image))
  except (tarfile.TarError, lzma.LZMAError, OSError, EOFError) as e:
    raise DataError(f'cannot read {archive}: {common.one_line(e)}') from e
  return sorted(classes), items


# ----------------------------------------------------------------------------
# Preprocessing and iterators.
# ----------------------------------------------------------------------------


def resize_square(image_HxWxC: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops to a square, then bilinear-resizes to [size, size, C] (C kept)."""
  image = image_HxWxC if image_HxWxC.ndim == 3 else image_HxWxC[..., None]
  h, w, c = image.shape
  if c == 4:  # RGBA (e.g. PNGs): drop alpha.
    image, c = image[..., :3], 3
  if h != w:
    m = min(h, w)
    image = image[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
  if image.shape[0] == size:
    return image
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
  return out[..., None] if c == 1 else out


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Record → {'images': float32 [S, S, C] normalised, 'labels': int32}; grain map."""

  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool = False
  flip: bool = True
  eval_transform: str = 'resize'  # resize | imagenet (used without augmentation)
  crop_pct: float = 0.875

  def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
    s = self.image_size
    if self.eval_transform == 'imagenet' and not self.augment:
      image = augment_lib.imagenet_eval_resize(np.asarray(record['image']), s, self.crop_pct)
    else:
      image = resize_square(np.asarray(record['image']), s)
    if self.augment and rng is not None:
      pad = s // 8  # Random crop of a reflect-padded image (translation by ≤ s/8).
      if pad:
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
        y, x = rng.integers(0, 2 * pad + 1, size=2)
        image = padded[y:y + s, x:x + s]
      if self.flip and rng.random() < 0.5:
        image = image[:, ::-1]
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    return {'images': x, 'labels': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class TimmPreprocess:
  """Record → {'images': float32 [S, S, C], 'labels': int32} by timm's train transform."""

  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  aug: augment_lib.AugmentConfig
  flip: bool = True

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    x = augment_lib.timm_train_image(np.asarray(record['image']), self.image_size, rng,
                                     self.mean, self.std, self.aug, self.flip)
    return {'images': x, 'labels': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class MixBatch:
  """Batch → + 'label_probs' f32 [B, K] by timm batch mixup/cutmix; grain map_with_index.

  The Generator comes from (seed, batch index): the same lam and box on every host
  (each mixes its own rows with their reverse), and resumable from the iterator state.
  """

  seed: int
  num_classes: int
  aug: augment_lib.AugmentConfig

  def __call__(self, index: int, batch: dict) -> dict:
    rng = np.random.default_rng([self.seed, _MIX_STREAM, index])
    a = self.aug
    mixed = augment_lib.mixup_cutmix(
        batch['images'], batch['labels'], self.num_classes, rng, mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
        label_smoothing=a.mixup_label_smoothing)
    return {**batch, 'images': mixed.images, 'label_probs': mixed.label_probs}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f'unknown config.data.{name} {value!r}; choose one of '
                      f'{", ".join(choices)}')


def _preprocess(source, image_size: int, augment: bool, flip: bool,
                eval_transform: str = 'resize', crop_pct: float = 0.875) -> Preprocess:
  if image_size < 1:
    raise ConfigError(f'image size must be positive, got {image_size}')
  _check_choice('eval_transform', eval_transform, EVAL_TRANSFORMS)
  mean, std = dataset_stats(source.name, source.channels)
  return Preprocess(image_size, mean, std, augment=augment, flip=flip,
                    eval_transform=eval_transform, crop_pct=crop_pct)


def image_train_iter(source, *, image_size: int, batch_size: int, seed: int, augment: bool,
                     flip: bool = True, process_index: int = 0, process_count: int = 1,
                     num_workers: int = 0, recipe: str = 'simple',
                     aug: augment_lib.AugmentConfig | None = None) -> grain.DatasetIterator:
  """Endless shuffled per-process batches {'images': f32 [B,S,S,C], 'labels': i32 [B]}.

  `random_map` seeds each record's augmentation from (seed, index), so
  `get_state()`/`set_state()` alone resume the exact batches. With augment and
  recipe='timm', `aug` (default: timm's ImageNet values) drives the transform and,
  if it mixes, each batch also has 'label_probs' f32 [B, K] (labels stay unmixed).
  """
  _check_choice('recipe', recipe, RECIPES)
  transform = _preprocess(source, image_size, augment, flip)
  timm = augment and recipe == 'timm'
  if timm:
    aug = aug or augment_lib.AugmentConfig()
    aug.validate()
    transform = TimmPreprocess(image_size, transform.mean, transform.std, aug, flip)
  if batch_size < 1:
    raise ConfigError(f'batch_size must be positive, got {batch_size}')
  ds = grain.MapDataset.source(source)
  if batch_size * process_count > len(ds):
    raise DataError(f'batch size {batch_size * process_count} exceeds the {len(ds)} training '
                    'images')
  # Global order and augmentation seeds first; then this process's rows of each global
  # batch (lazy: only those records are decoded), so batches do not depend on host count.
  ds = ds.shuffle(seed=seed).repeat().random_map(transform, seed=seed)
  ds = common.process_batches(ds, batch_size, process_index, process_count)
  if timm and aug.mixes:  # Batch index = global batch index, whatever the host count.
    ds = ds.map_with_index(MixBatch(seed, source.num_classes, aug))
  return common.to_iterator(ds, num_workers)


def image_eval_batches(source, *, image_size: int, batch_size: int,
                       max_examples: int | None = None, process_index: int = 0,
                       process_count: int = 1, eval_transform: str = 'resize',
                       crop_pct: float = 0.875) -> Iterator[dict[str, np.ndarray]]:
  """Eval batches {'images', 'labels', 'weights'}; the last is zero-padded with weight 0.

  Each example (of `max_examples` evenly spaced ones, if set) is weighted once. With
  several processes, process i holds rows [i*B, (i+1)*B) of each global batch of
  B x process_count examples (`common.local_rows`, as training), and all yield the same
  number of batches (needed to assemble global arrays). eval_transform: 'resize' (centre
  square, bilinear) or 'imagenet' (short side floor(S / crop_pct) bicubic, centre crop).
  """
  transform = _preprocess(source, image_size, augment=False, flip=False,
                          eval_transform=eval_transform, crop_pct=crop_pct)
  if batch_size < 1:
    raise ConfigError(f'batch_size must be positive, got {batch_size}')
  source = SubsetSource(source, max_examples)
  rows = common.local_rows(len(source), batch_size, process_index, process_count)
  return _eval_batches(source, transform, rows, batch_size)


def _eval_batches(source, transform: Preprocess, rows: Iterator[range],
                  batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  image_size = transform.image_size
  for indices in rows:
    images = np.zeros([batch_size, image_size, image_size, source.channels], np.float32)
    labels = np.zeros([batch_size], np.int32)
    weights = np.zeros([batch_size], np.float32)
    for r, i in enumerate(indices):
      out = transform(source[i])
      images[r], labels[r], weights[r] = out['images'], out['labels'], 1.0
    yield {'images': images, 'labels': labels, 'weights': weights}


# ----------------------------------------------------------------------------
# Config glue.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class ImageData:
  train_iter: grain.DatasetIterator
  num_classes: int
  channels: int
  eval_batches: Callable[[str, int], Iterator[dict[str, np.ndarray]]]  # (split, size).
  train_size: int


def build_image_source(data_cfg: ml_collections.ConfigDict, split: str):
  """The random-access source of `split` for `config.data.name`."""
  name = data_cfg.name
  if name.startswith('tfds:'):
    return TfdsImageSource(name[len('tfds:'):], split, data_cfg.get('tfds_data_dir') or None)
  if name.startswith('folder:'):
    root = common.resolve_path(name[len('folder:'):], data_cfg.get('dir', ''))
    return load_image_folder(root, split)
  if name == 'mnist':
    data_dir = common.resolve_data_dir(data_cfg.get('dir', ''))
    return ArraySource(*load_mnist(data_dir, split), name='mnist', num_classes=10)
  if name == 'cifar10':
    data_dir = common.resolve_data_dir(data_cfg.get('dir', ''))
    cache_dir = common.resolve_cache_dir(data_cfg.get('cache_dir', ''))
    return ArraySource(*load_cifar10(data_dir, split, cache_dir), name='cifar10', num_classes=10)
  raise ConfigError(f"unknown config.data.name {name!r}; expected 'mnist', 'cifar10', "
                    "'folder:<path>' or 'tfds:<name>'")


def _flip(setting: str | bool, name: str) -> bool:
  """`data.flip`: auto (on, except for the digit datasets, where a flip changes the class)."""
  if isinstance(setting, bool):
    return setting
  _check_choice('flip', setting, ('auto', 'on', 'off'))
  return setting == 'on' or (setting == 'auto' and name not in ('mnist', 'fashion_mnist'))


def build_image_data(data_cfg: ml_collections.ConfigDict, *, image_size: int, batch_size: int,
                     seed: int, process_index: int = 0, process_count: int = 1) -> ImageData:
  """Train iterator, class/channel counts and an eval-batch factory from `config.data`."""
  if image_size < 1:
    raise ConfigError(f'image size must be positive, got {image_size}')
  train = SubsetSource(build_image_source(data_cfg, 'train'),
                       data_cfg.get('max_train_examples', 0) or None)
  flip = _flip(data_cfg.get('flip', 'auto'), train.name)
  recipe = data_cfg.get('recipe', 'simple')
  eval_transform = data_cfg.get('eval_transform', 'resize')
  _check_choice('recipe', recipe, RECIPES)
  _check_choice('eval_transform', eval_transform, EVAL_TRANSFORMS)
  aug = augment_lib.AugmentConfig.from_config(data_cfg.get('timm'))
  train_iter = image_train_iter(
      train, image_size=image_size, batch_size=batch_size, seed=seed,
      augment=data_cfg.get('augment', True), flip=flip, process_index=process_index,
      process_count=process_count, num_workers=data_cfg.get('num_workers', 0), recipe=recipe,
      aug=aug)
  eval_sources = {}

  def eval_batches(split: str, size: int) -> Iterator[dict[str, np.ndarray]]:
    if split not in eval_sources:  # Load (and decode) each split once.
      eval_sources[split] = build_image_source(data_cfg, split)
    return image_eval_batches(eval_sources[split], image_size=size, batch_size=batch_size,
                              max_examples=data_cfg.get('max_eval_examples', 0) or None,
                              process_index=process_index, process_count=process_count,
                              eval_transform=eval_transform, crop_pct=aug.crop_pct)

  return ImageData(train_iter, train.num_classes, train.channels, eval_batches, len(train))
