"""Tests for seqpe_jax.data.vision on the real MNIST/CIFAR-10 files (skipped only if absent)."""

import gzip
import io
import pathlib
import struct
import tarfile
import unittest
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from seqpe_jax.data import augment
from seqpe_jax.data import common
from seqpe_jax.data import vision
from seqpe_jax.errors import ConfigError, DataError
from tests.testutil import TmpDirTestCase


def _real_data_dir() -> pathlib.Path:
  try:
    return common.resolve_data_dir('')
  except DataError as e:
    raise unittest.SkipTest(f'real data directory absent: {e}')


def _real_cifar_members(per_class: int = 2, test_classes: int = 3):
  """A few (name, jpeg bytes) from the real archive: test/<3 classes> and train/<1 class>."""
  archive = _real_data_dir() / 'cifar10' / 'cifar10-jpg.tar.xz'
  counts, out = {}, []
  with tarfile.open(archive, 'r:xz') as tar:  # Test members come first: a short scan.
    for member in tar:
      parts = member.name.split('/')
      if not member.isfile() or len(parts) != 3:
        continue
      key = tuple(parts[:2])
      if key[0] == 'test' and len({k for k in counts if k[0] == 'test'} | {key}) > test_classes:
        continue
      if counts.get(key, 0) < per_class:
        counts[key] = counts.get(key, 0) + 1
        out.append((member.name, tar.extractfile(member).read()))
      if key[0] == 'train' and counts[key] == per_class:
        return out
  raise AssertionError('archive layout changed')


def _write_tar(path: pathlib.Path, members) -> None:
  with tarfile.open(path, 'w:xz') as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


class MnistTest(TmpDirTestCase):

  @parameterized.parameters(('train', 60_000), ('test', 10_000))
  def test_real_files(self, split, n):
    images, labels = vision.load_mnist(_real_data_dir(), split)
    self.assertEqual(images.shape, (n, 28, 28, 1))
    self.assertEqual(images.dtype, np.uint8)
    self.assertEqual(labels.dtype, np.int32)
    np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    self.assertBetween(images.mean() / 255, 0.12, 0.14)  # MNIST pixel mean ~0.13.

  def test_corrupt_magic(self):
    root = self.tmp / 'mnist'
    root.mkdir()
    with gzip.open(root / 't10k-images-idx3-ubyte.gz', 'wb') as f:
      f.write(struct.pack('>IIII', 1234, 1, 28, 28) + bytes(784))
    with gzip.open(root / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
      f.write(struct.pack('>II', 2049, 1) + bytes(1))
    self.assertOneLineError(DataError, lambda: vision.load_mnist(self.tmp, 'test'),
                            't10k-images-idx3-ubyte.gz', 'magic')

  def test_truncated_and_not_gzip(self):
    root = self.tmp / 'mnist'
    root.mkdir()
    with gzip.open(root / 't10k-images-idx3-ubyte.gz', 'wb') as f:
      f.write(struct.pack('>IIII', 2051, 2, 28, 28) + bytes(784))
    (root / 't10k-labels-idx1-ubyte.gz').write_bytes(b'not gzip')
    self.assertOneLineError(DataError, lambda: vision.load_mnist(self.tmp, 'test'),
                            'truncated')

  def test_missing(self):
    self.assertOneLineError(DataError, lambda: vision.load_mnist(self.tmp, 'train'),
                            'train-images-idx3-ubyte.gz')


class Cifar10Test(TmpDirTestCase):

  def test_small_archive_decodes_and_caches(self):
    members = _real_cifar_members()
    (self.tmp / 'cifar10').mkdir()
    _write_tar(self.tmp / 'cifar10' / 'cifar10-jpg.tar.xz',
               [('README.md', b'hi')] + members[::-1])  # Order must not matter.
    images, labels = vision.load_cifar10(self.tmp, 'test', self.cache)
    self.assertEqual(images.shape, (6, 32, 32, 3))
    self.assertEqual(images.dtype, np.uint8)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])  # airplane, automobile, bird.
    with Image.open(io.BytesIO(dict(members)['test/airplane/0000.jpg'])) as img:
      np.testing.assert_array_equal(images[0], np.asarray(img.convert('RGB')))
    # Train has one class here ('airplane'), yet shares the class indices.
    train_images, train_labels = vision.load_cifar10(self.tmp, 'train', self.cache)
    self.assertEqual(train_images.shape, (2, 32, 32, 3))
    np.testing.assert_array_equal(train_labels, [0, 0])
    with mock.patch.object(vision, '_read_cifar_archive', side_effect=AssertionError):
      again, _ = vision.load_cifar10(self.tmp, 'test', self.cache)  # From the cache.
    np.testing.assert_array_equal(again, images)
    self.assertLen(list((self.cache / 'cifar10').glob('*.npz')), 2)

  def test_undecodable_member(self):
    (self.tmp / 'cifar10').mkdir()
    _write_tar(self.tmp / 'cifar10' / 'cifar10-jpg.tar.xz',
               [('test/cat/0001.jpg', b'not a jpeg')])
    self.assertOneLineError(DataError, lambda: vision.load_cifar10(self.tmp, 'test', self.cache),
                            'test/cat/0001.jpg')

  def test_extracted_folder(self):
    for cls in ('b', 'a'):
      (self.tmp / 'cifar10' / 'test' / cls).mkdir(parents=True)
      (self.tmp / 'cifar10' / 'test' / cls / '0.png').write_bytes(
          _png(np.full([32, 32, 3], ord(cls))))
    images, labels = vision.load_cifar10(self.tmp, 'test', self.cache)
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_array_equal(images[:, 0, 0, 0], [ord('a'), ord('b')])

  def test_missing(self):
    self.assertOneLineError(DataError, lambda: vision.load_cifar10(self.tmp, 'test', self.cache),
                            'cifar10-jpg.tar.xz')


class FolderAndTfdsTest(TmpDirTestCase):

  def test_image_folder(self):
    root = self.tmp / 'pets'
    for split, cls, shape in [('train', 'dog', [20, 30, 3]), ('train', 'cat', [8, 8]),
                              ('val', 'dog', [16, 16, 4]), ('val', 'eel', [5, 9, 3])]:
      (root / split / cls).mkdir(parents=True)
      (root / split / cls / 'x.png').write_bytes(_png(np.zeros(shape)))
    (root / 'train' / 'dog' / 'notes.txt').write_text('ignored')
    train, val = vision.load_image_folder(root, 'train'), vision.load_image_folder(root, 'val')
    self.assertEqual(train.class_names, ['cat', 'dog', 'eel'])  # Union of all splits.
    self.assertEqual([train[i]['label'] for i in range(len(train))], [0, 1])
    self.assertEqual([val[i]['label'] for i in range(len(val))], [1, 2])
    self.assertEqual(train[0]['image'].shape, (8, 8, 3))  # Grey → RGB.
    self.assertEqual(val[0]['image'].shape, (16, 16, 3))  # RGBA → RGB.
    batch = next(vision.image_eval_batches(val, image_size=12, batch_size=4))
    self.assertEqual(batch['images'].shape, (4, 12, 12, 3))
    self.assertOneLineError(DataError, lambda: vision.load_image_folder(root, 'test'), 'test')

  @parameterized.parameters(('mnist', 1, 10), ('cifar10', 3, 10))
  def test_tfds_mock_source(self, name, channels, num_classes):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
      source = vision.TfdsImageSource(name, 'train')
      self.assertEqual((len(source), source.channels, source.num_classes),
                       (6, channels, num_classes))
      it = vision.image_train_iter(source, image_size=16, batch_size=4, seed=0, augment=True)
      batch = next(it)
    self.assertEqual(batch['images'].shape, (4, 16, 16, channels))
    self.assertEqual(batch['labels'].dtype, np.int32)

  def test_tfds_not_prepared(self):
    self.assertOneLineError(DataError, lambda: vision.TfdsImageSource(
        'mnist', 'train', data_dir=str(self.tmp)), 'mnist', 'tfds build')


class PipelineTest(TmpDirTestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.grey = vision.ArraySource(rng.integers(0, 256, [40, 28, 28, 1], dtype=np.uint8),
                                   np.arange(40, dtype=np.int32) % 10, name='mnist')
    self.rgb = vision.ArraySource(rng.integers(0, 256, [10, 32, 32, 3], dtype=np.uint8),
                                  np.arange(10, dtype=np.int32), name='cifar10')

  def test_train_resume_exact(self):
    kwargs = dict(image_size=32, batch_size=8, seed=5, augment=True)
    it = vision.image_train_iter(self.rgb, **kwargs)
    self.assertEqual(next(it)['images'].shape, (8, 32, 32, 3))
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    fresh = vision.image_train_iter(self.rgb, **kwargs)
    fresh.set_state(state)
    for want in expected:
      got = next(fresh)
      np.testing.assert_array_equal(got['images'], want['images'])
      np.testing.assert_array_equal(got['labels'], want['labels'])

  def test_augment_changes_pixels_and_grey_stays_one_channel(self):
    plain = next(vision.image_train_iter(self.grey, image_size=28, batch_size=40, seed=0,
                                         augment=False))
    aug = next(vision.image_train_iter(self.grey, image_size=28, batch_size=40, seed=0,
                                       augment=True, flip=False))
    self.assertEqual(aug['images'].shape, (40, 28, 28, 1))
    np.testing.assert_array_equal(plain['labels'], aug['labels'])
    self.assertFalse(np.array_equal(plain['images'], aug['images']))
    # Without augmentation: exact (x / 255 - mean) / std of the stored pixels.
    mean, std = vision.DATASET_STATS['mnist']
    values = np.sort(plain['images'].ravel())
    expected = np.sort(((self.grey.images.astype(np.float32) / 255 - mean[0]) / std[0]).ravel())
    np.testing.assert_allclose(values, expected, rtol=1e-6)

  @parameterized.parameters(32, 48, 64)
  def test_eval_resolutions_and_padding(self, size):
    batches = list(vision.image_eval_batches(self.grey, image_size=size, batch_size=16))
    self.assertLen(batches, 3)
    self.assertEqual(batches[0]['images'].shape, (16, size, size, 1))
    weights = np.concatenate([b['weights'] for b in batches])
    self.assertEqual(weights.sum(), 40)
    np.testing.assert_array_equal(batches[-1]['weights'], [1] * 8 + [0] * 8)
    np.testing.assert_array_equal(batches[-1]['images'][8:], 0)
    labels = np.concatenate([b['labels'] for b in batches])[weights > 0]
    np.testing.assert_array_equal(labels, self.grey.labels)

  def test_eval_process_shards(self):
    shards = [list(vision.image_eval_batches(self.rgb, image_size=8, batch_size=2,
                                             max_examples=7, process_index=i,
                                             process_count=2)) for i in range(2)]
    self.assertEqual(len(shards[0]), len(shards[1]))  # Same step count on every host.
    labels = [np.concatenate([b['labels'][b['weights'] > 0] for b in s]) for s in shards]
    # An evenly spaced subset: class-sorted data keep all classes.
    self.assertCountEqual(np.concatenate(labels), [0, 1, 2, 4, 5, 7, 8])

  def test_timm_recipe_resume_exact(self):
    kwargs = dict(image_size=16, batch_size=4, seed=3, augment=True, recipe='timm')
    it = vision.image_train_iter(self.rgb, **kwargs)
    first = next(it)
    self.assertEqual(first['images'].shape, (4, 16, 16, 3))
    self.assertEqual((first['labels'].dtype, first['label_probs'].dtype), (np.int32, np.float32))
    self.assertEqual(first['label_probs'].shape, (4, 10))
    np.testing.assert_allclose(first['label_probs'].sum(1), 1.0, rtol=1e-6)
    # 'labels' stay unmixed: a row's mass above the smoothing floor (0.01) sits on its own
    # label and on its partner's (the reversed batch).
    for row, lbl, partner in zip(first['label_probs'], first['labels'], first['labels'][::-1]):
      self.assertLessEqual(set(np.flatnonzero(row > 0.0101)), {lbl, partner})
      self.assertGreater(row[lbl], 0.0101)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = vision.image_train_iter(self.rgb, **kwargs)
    fresh.set_state(state)
    for want in expected:
      got = next(fresh)
      self.assertEqual(set(got), {'images', 'labels', 'label_probs'})
      for k in got:
        np.testing.assert_array_equal(got[k], want[k])
    again = next(vision.image_train_iter(self.rgb, **kwargs))
    np.testing.assert_array_equal(again['images'], first['images'])
    simple = next(vision.image_train_iter(self.rgb, **{**kwargs, 'recipe': 'simple'}))
    self.assertNotIn('label_probs', simple)

  def test_timm_recipe_without_mixing_and_grey(self):
    aug = augment.AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0)
    batch = next(vision.image_train_iter(self.grey, image_size=20, batch_size=8, seed=0,
                                         augment=True, flip=False, recipe='timm', aug=aug))
    self.assertEqual(set(batch), {'images', 'labels'})
    self.assertEqual(batch['images'].shape, (8, 20, 20, 1))
    # Mixing seeds depend on the batch index only: two hosts see the same lam/box.
    hosts = [next(vision.image_train_iter(self.rgb, image_size=8, batch_size=2, seed=1,
                                          augment=True, recipe='timm', process_index=i,
                                          process_count=2)) for i in range(2)]
    lam = [np.sort(h['label_probs'][0])[-1] for h in hosts]
    self.assertAlmostEqual(lam[0], lam[1], places=6)

  def test_imagenet_eval_transform(self):
    batch = next(vision.image_eval_batches(self.rgb, image_size=24, batch_size=4,
                                           eval_transform='imagenet'))
    self.assertEqual(batch['images'].shape, (4, 24, 24, 3))
    mean, std = vision.DATASET_STATS['cifar10']
    want = augment.imagenet_eval_resize(self.rgb.images[0], 24).astype(np.float32) / 255
    np.testing.assert_allclose(batch['images'][0], (want - mean) / np.float32(std), rtol=1e-5,
                               atol=1e-6)
    plain = next(vision.image_eval_batches(self.rgb, image_size=24, batch_size=4))
    self.assertFalse(np.allclose(plain['images'], batch['images']))
    grey = next(vision.image_eval_batches(self.grey, image_size=40, batch_size=2,
                                          eval_transform='imagenet'))
    self.assertEqual(grey['images'].shape, (2, 40, 40, 1))
    self.assertOneLineError(ConfigError, lambda: next(vision.image_eval_batches(
        self.rgb, image_size=8, batch_size=2, eval_transform='timm')), 'eval_transform')
    self.assertOneLineError(ConfigError, lambda: vision.image_train_iter(
        self.rgb, image_size=8, batch_size=2, seed=0, augment=True, recipe='deit'), 'recipe')

  def test_bad_sizes(self):
    self.assertOneLineError(ConfigError, lambda: vision.image_train_iter(
        self.rgb, image_size=0, batch_size=2, seed=0, augment=False), 'image size')
    self.assertOneLineError(DataError, lambda: vision.image_train_iter(
        self.rgb, image_size=8, batch_size=11, seed=0, augment=False), 'batch size 11')


class BuildTest(TmpDirTestCase):

  def _cfg(self, **overrides):
    cfg = ml_collections.ConfigDict(dict(
        dir='', name='mnist', cache_dir=str(self.cache), num_workers=0, augment=True,
        eval_split='test', max_eval_examples=50))
    cfg.update(overrides)
    return cfg

  def test_mnist(self):
    _real_data_dir()
    data = vision.build_image_data(self._cfg(), image_size=32, batch_size=16, seed=0)
    self.assertEqual((data.num_classes, data.channels, data.train_size), (10, 1, 60_000))
    self.assertEqual(next(data.train_iter)['images'].shape, (16, 32, 32, 1))
    batches = list(data.eval_batches('test', 48))
    self.assertEqual(batches[0]['images'].shape, (16, 48, 48, 1))
    self.assertEqual(sum(b['weights'].sum() for b in batches), 50)
    small = vision.build_image_data(self._cfg(max_train_examples=20), image_size=28,
                                    batch_size=20, seed=0)
    self.assertEqual(small.train_size, 20)

  def test_cifar_from_small_archive(self):
    (self.tmp / 'cifar10').mkdir()
    _write_tar(self.tmp / 'cifar10' / 'cifar10-jpg.tar.xz', _real_cifar_members())
    data = vision.build_image_data(self._cfg(name='cifar10', dir=str(self.tmp)),
                                   image_size=32, batch_size=2, seed=0)
    self.assertEqual((data.channels, data.train_size), (3, 2))
    self.assertEqual(next(data.eval_batches('test', 64))['images'].shape, (2, 64, 64, 3))

  def test_timm_recipe_and_imagenet_eval_from_config(self):
    (self.tmp / 'cifar10').mkdir()
    _write_tar(self.tmp / 'cifar10' / 'cifar10-jpg.tar.xz', _real_cifar_members())
    cfg = self._cfg(name='cifar10', dir=str(self.tmp), recipe='timm', eval_transform='imagenet')
    cfg.timm = ml_collections.ConfigDict({'re_prob': 1.0, 'crop_pct': 0.5})
    data = vision.build_image_data(cfg, image_size=16, batch_size=2, seed=0)
    batch = next(data.train_iter)
    self.assertEqual(batch['label_probs'].shape, (2, 10))
    ev = next(data.eval_batches('test', 16))  # 32 px → short side 32, crop 16 at 8.
    src = vision.build_image_source(cfg, 'test')
    mean, std = vision.DATASET_STATS['cifar10']
    want = (src[0]['image'][8:24, 8:24].astype(np.float32) / 255 - mean) / np.float32(std)
    np.testing.assert_allclose(ev['images'][0], want, rtol=1e-5, atol=1e-6)
    cfg.timm.re_prob = 3.0
    self.assertOneLineError(ConfigError, lambda: vision.build_image_data(
        cfg, image_size=16, batch_size=2, seed=0), 're_prob')

  def test_errors(self):
    self.assertOneLineError(ConfigError, lambda: vision.build_image_data(
        self._cfg(), image_size=0, batch_size=2, seed=0), 'image size')
    self.assertOneLineError(ConfigError, lambda: vision.build_image_data(
        self._cfg(recipe='randaug'), image_size=8, batch_size=2, seed=0), 'recipe')
    self.assertOneLineError(ConfigError, lambda: vision.build_image_data(
        self._cfg(name='svhn', dir=str(self.tmp)), image_size=8, batch_size=2, seed=0), 'svhn')


if __name__ == '__main__':
  absltest.main()
