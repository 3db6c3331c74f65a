"""Tests for seqpe_jax.data.augment (timm's recipe on the host)."""

import io
import tarfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from seqpe_jax.data import augment
from seqpe_jax.data import common
from seqpe_jax.errors import ConfigError, DataError
from tests.testutil import TmpDirTestCase

_FILL = (125, 123, 114)  # CIFAR-10 mean colour.
_MEAN, _STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _real_cifar_image() -> np.ndarray | None:
  """The first JPEG of the shared CIFAR-10 archive (None if absent)."""
  try:
    archive = common.resolve_data_dir('') / 'cifar10' / 'cifar10-jpg.tar.xz'
  except DataError:
    return None
  if not archive.is_file():
    return None
  with tarfile.open(archive, 'r:xz') as tar:
    for member in tar:
      if member.isfile() and member.name.lower().endswith('.jpg'):
        with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
          return np.asarray(img.convert('RGB'))
  return None


def _images():
  rng = np.random.default_rng(0)
  synthetic = rng.integers(0, 256, [24, 20, 3], dtype=np.uint8)
  real = _real_cifar_image()
  return [synthetic] + ([real] if real is not None else [])


def _one_op(img, name, magnitude, seed=0):
  spec = augment.RandAugmentSpec(num_ops=1, magnitude=magnitude, magnitude_std=0.0, prob=1.0)
  return augment.rand_augment(img, np.random.default_rng(seed), _FILL, spec, ops=(name,))


class GeometryTest(parameterized.TestCase):

  def test_crop_params_in_bounds_and_scale(self):
    for seed in range(50):
      top, left, h, w = augment.crop_params(40, 60, np.random.default_rng(seed))
      self.assertTrue(0 <= top <= 40 - h and 0 <= left <= 60 - w, (top, left, h, w))
      self.assertBetween(h * w / 2400, 0.06, 1.0)  # scale 0.08..1 up to rounding
      self.assertBetween(w / h, 0.7, 1.45)

  def test_crop_fallback_is_centre(self):
    # Area 400 at aspect <= 4/3 needs h >= 17 > 10: all 10 tries fail, then the centre
    # crop of the widest allowed aspect: h = 10, w = round(10 * 4/3) = 13, left = 13.
    self.assertEqual(augment.crop_params(10, 40, np.random.default_rng(0), scale=(1.0, 1.0)),
                     (0, 13, 10, 13))
    self.assertEqual(augment.crop_params(40, 10, np.random.default_rng(0), scale=(1.0, 1.0)),
                     (13, 0, 13, 10))

  def test_random_resized_crop(self):
    img = _images()[-1]
    out = augment.random_resized_crop(img, 16, np.random.default_rng(1))
    self.assertEqual((out.shape, out.dtype), ((16, 16, 3), np.uint8))
    np.testing.assert_array_equal(out, augment.random_resized_crop(img, 16,
                                                                   np.random.default_rng(1)))
    grey = augment.random_resized_crop(img[..., 0], 8, np.random.default_rng(1))
    self.assertEqual(grey.shape, (8, 8, 1))
    # Full-scale square crop of a square image: a plain bicubic resize.
    sq = img[:20, :20]
    full = augment.random_resized_crop(sq, 20, np.random.default_rng(0), scale=(1, 1),
                                       ratio=(1, 1))
    np.testing.assert_array_equal(full, sq)

  def test_hflip(self):
    img = np.arange(12, dtype=np.uint8).reshape(2, 6, 1)
    np.testing.assert_array_equal(augment.random_hflip(img, np.random.default_rng(0), 1.0),
                                  img[:, ::-1])
    np.testing.assert_array_equal(augment.random_hflip(img, np.random.default_rng(0), 0.0), img)
    flips = [augment.random_hflip(img, np.random.default_rng(s))[0, 0, 0] != 0
             for s in range(200)]
    self.assertBetween(np.mean(flips), 0.35, 0.65)

  @parameterized.parameters(((32, 32), 32, (32, 32)), ((300, 200), 224, (224, 224)),
                            ((20, 50), 48, (48, 48)), ((256, 256), 224, (224, 224)))
  def test_imagenet_eval_resize(self, hw, size, want):
    img = np.random.default_rng(0).integers(0, 256, [*hw, 3], dtype=np.uint8)
    out = augment.imagenet_eval_resize(img, size)
    self.assertEqual((out.shape[:2], out.dtype), (want, np.uint8))
    if hw == (256, 256):  # floor(224 / 0.875) = 256: no resize, a centre crop at 16.
      np.testing.assert_array_equal(out, img[16:240, 16:240])
    self.assertEqual(augment.imagenet_eval_resize(img[..., 0], size).shape, (*want, 1))

  def test_imagenet_eval_matches_pil_pipeline(self):
    img = np.random.default_rng(1).integers(0, 256, [32, 32, 3], dtype=np.uint8)
    # Short side floor(32 / 0.875) = 36 (bicubic), then the centre 32 x 32 at offset 2.
    pil = np.asarray(Image.fromarray(img).resize((36, 36), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(augment.imagenet_eval_resize(img, 32), pil[2:34, 2:34])


class RandAugmentTest(parameterized.TestCase):

  @parameterized.parameters(*augment.RAND_INCREASING_OPS)
  def test_each_op_runs(self, name):
    for img in _images():
      for m in (0.0, 5.0, 10.0):
        out = _one_op(img, name, m)
        self.assertEqual((out.shape, out.dtype), (img.shape, np.uint8), (name, m))
      grey = _one_op(img[..., :1], name, 9.0)
      self.assertEqual(grey.shape, img[..., :1].shape)

  def test_op_semantics(self):
    img = _images()[-1]
    np.testing.assert_array_equal(_one_op(img, 'Invert', 9), 255 - img)
    np.testing.assert_array_equal(_one_op(img, 'SolarizeIncreasing', 10), 255 - img)  # thr 0
    np.testing.assert_array_equal(_one_op(img, 'SolarizeIncreasing', 0), img)          # thr 256
    np.testing.assert_array_equal(_one_op(img, 'PosterizeIncreasing', 10), 0)          # 0 bits
    self.assertTrue(set(np.unique(_one_op(img, 'PosterizeIncreasing', 9))) <= {0, 128})
    np.testing.assert_array_equal(_one_op(img, 'PosterizeIncreasing', 0), img & 0xF0)  # 4 bits
    np.testing.assert_array_equal(_one_op(img, 'SolarizeAdd', 0), img)
    add = _one_op(img, 'SolarizeAdd', 10).astype(int)  # +110 below 128, capped at 255
    want = np.where(img < 128, np.minimum(img.astype(int) + 110, 255), img)
    np.testing.assert_array_equal(add, want)
    for enhance in ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                    'SharpnessIncreasing', 'ShearX', 'Rotate', 'TranslateXRel'):
      np.testing.assert_array_equal(_one_op(img, enhance, 0), img, enhance)  # factor 1 / no move

  def test_translate_fills_with_mean(self):
    img = np.full([20, 20, 3], 7, np.uint8)
    out = _one_op(img, 'TranslateXRel', 10)  # 0.45 * 20 = 9 px either way
    filled = np.all(out == _FILL, axis=-1)
    np.testing.assert_array_equal(filled.sum(axis=1), 9)
    self.assertTrue(np.all(out[~filled] == 7))

  def test_deterministic_probability_and_clipping(self):
    img = _images()[0]
    spec = augment.parse_randaugment('rand-m9-mstd0.5-inc1')
    self.assertEqual(spec, augment.RandAugmentSpec(num_ops=2, magnitude=9.0, magnitude_std=0.5,
                                                   prob=0.5))
    a = augment.rand_augment(img, np.random.default_rng(4), _FILL, spec)
    np.testing.assert_array_equal(a, augment.rand_augment(img, np.random.default_rng(4), _FILL,
                                                          spec))
    outs = [augment.rand_augment(img, np.random.default_rng(s), _FILL, spec) for s in range(40)]
    unchanged = np.mean([np.array_equal(o, img) for o in outs])
    self.assertBetween(unchanged, 0.1, 0.5)  # both ops skipped ~1/4 (+ no-op draws)
    off = augment.RandAugmentSpec(prob=0.0)
    np.testing.assert_array_equal(augment.rand_augment(img, np.random.default_rng(0), _FILL,
                                                       off), img)
    over = augment.RandAugmentSpec(num_ops=1, magnitude=15.0, magnitude_std=0.0, prob=1.0)
    top = augment.RandAugmentSpec(num_ops=1, magnitude=10.0, magnitude_std=0.0, prob=1.0)
    for op in ('Rotate', 'SolarizeAdd'):
      np.testing.assert_array_equal(
          augment.rand_augment(img, np.random.default_rng(1), _FILL, over, ops=(op,)),
          augment.rand_augment(img, np.random.default_rng(1), _FILL, top, ops=(op,)))

  def test_parse(self):
    self.assertEqual(augment.parse_randaugment('rand-n3-m7-p0.9-inc1'),
                     augment.RandAugmentSpec(3, 7.0, 0.5, 0.9))
    self.assertEqual(augment.parse_randaugment('rand-m9-mstd101-inc1').magnitude_std,
                     float('inf'))
    for bad in ('auto-m9-inc1', 'rand-m9', 'rand-mx-inc1', 'rand-q3-inc1'):
      with self.assertRaises(ConfigError) as ctx:
        augment.parse_randaugment(bad)
      self.assertNotIn('\n', str(ctx.exception))


class ErasingTest(parameterized.TestCase):

  @parameterized.parameters('pixel', 'rand', 'const')
  def test_changes_only_a_box(self, mode):
    x = np.full([32, 24, 3], 5.0, np.float32)
    for seed in range(20):
      out = augment.random_erase(x, np.random.default_rng(seed), prob=1.0, mode=mode)
      self.assertEqual((out.shape, out.dtype), (x.shape, np.float32))
      rows, cols = np.nonzero(np.any(out != 5.0, axis=-1))
      self.assertNotEmpty(rows)
      top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
      box = out[top:bottom, left:right]
      self.assertTrue(np.all(box != 5.0))  # a full rectangle (noise never hits 5 exactly)
      self.assertBetween((bottom - top) * (right - left) / (32 * 24), 0.01, 0.4)
      if mode == 'const':
        np.testing.assert_array_equal(box, 0.0)
      if mode == 'rand':  # one colour per box
        np.testing.assert_array_equal(box, np.broadcast_to(box[:1, :1], box.shape))
    self.assertIs(augment.random_erase(x, np.random.default_rng(0), prob=0.0), x)

  def test_probability(self):
    x = np.zeros([16, 16, 1], np.float32)
    hits = [not np.array_equal(augment.random_erase(x, np.random.default_rng(s)), x)
            for s in range(400)]
    self.assertBetween(np.mean(hits), 0.18, 0.32)


class MixupTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.x = rng.normal(size=[6, 12, 10, 3]).astype(np.float32)
    self.y = np.array([0, 1, 2, 3, 4, 5])

  def test_cutmix_box_and_lam(self):
    for seed in range(20):
      m = augment.mixup_cutmix(self.x, self.y, 10, np.random.default_rng(seed), mixup_alpha=0.0)
      self.assertIsNotNone(m.box)
      y0, y1, x0, x1 = m.box
      self.assertAlmostEqual(m.lam, 1 - (y1 - y0) * (x1 - x0) / 120)
      inside = np.zeros([12, 10], bool)
      inside[y0:y1, x0:x1] = True
      np.testing.assert_array_equal(m.images[:, inside], self.x[::-1][:, inside])
      np.testing.assert_array_equal(m.images[:, ~inside], self.x[:, ~inside])
      self._check_targets(m)

  def test_mixup_blend(self):
    m = augment.mixup_cutmix(self.x, self.y, 10, np.random.default_rng(1), cutmix_alpha=0.0)
    self.assertIsNone(m.box)
    self.assertBetween(m.lam, 0.0, 1.0)
    np.testing.assert_allclose(m.images, m.lam * self.x + (1 - m.lam) * self.x[::-1], rtol=1e-5,
                               atol=1e-6)
    self._check_targets(m)

  def _check_targets(self, m):
    self.assertEqual((m.label_probs.shape, m.label_probs.dtype), ((6, 10), np.float32))
    np.testing.assert_allclose(m.label_probs.sum(1), 1.0, rtol=1e-6)
    on, off = 0.9 + 0.01, 0.01  # smoothing 0.1 over 10 classes
    np.testing.assert_allclose(m.label_probs[0, 0], m.lam * on + (1 - m.lam) * off, rtol=1e-5)
    np.testing.assert_allclose(m.label_probs[0, 5], (1 - m.lam) * on + m.lam * off, rtol=1e-5)
    np.testing.assert_allclose(m.label_probs[0, 7], off, rtol=1e-5)

  def test_switch_determinism_and_no_mix(self):
    kinds = [augment.mixup_cutmix(self.x, self.y, 10, np.random.default_rng(s)).box is None
             for s in range(100)]
    self.assertBetween(np.mean(kinds), 0.35, 0.65)
    a = augment.mixup_cutmix(self.x, self.y, 10, np.random.default_rng(7))
    b = augment.mixup_cutmix(self.x, self.y, 10, np.random.default_rng(7))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.label_probs, b.label_probs)
    none = augment.mixup_cutmix(self.x, self.y, 10, np.random.default_rng(0), prob=0.0)
    self.assertEqual(none.lam, 1.0)
    np.testing.assert_array_equal(none.images, self.x)
    np.testing.assert_allclose(none.label_probs, augment.smooth_one_hot(self.y, 10, 0.1))


class TrainTransformAndConfigTest(TmpDirTestCase):

  def test_timm_train_image(self):
    for img in _images():
      a = augment.timm_train_image(img, 16, np.random.default_rng(3), _MEAN, _STD)
      b = augment.timm_train_image(img, 16, np.random.default_rng(3), _MEAN, _STD)
      self.assertEqual((a.shape, a.dtype), ((16, 16, 3), np.float32))
      np.testing.assert_array_equal(a, b)
      self.assertTrue(np.all(np.isfinite(a)))
      self.assertLess(np.abs(a).max(), 12)  # normalised pixels / N(0, 1) noise
      c = augment.timm_train_image(img, 16, np.random.default_rng(4), _MEAN, _STD)
      self.assertFalse(np.array_equal(a, c))
    grey = augment.timm_train_image(_images()[0][..., 0], 8, np.random.default_rng(0), (0.5,),
                                    (0.5,))
    self.assertEqual(grey.shape, (8, 8, 1))

  def test_config(self):
    cfg = augment.AugmentConfig.from_config({'re_prob': 0.0, 'crop_scale': [0.5, 1.0]})
    self.assertEqual((cfg.re_prob, cfg.crop_scale, cfg.mixup_alpha), (0.0, (0.5, 1.0), 0.8))
    self.assertTrue(cfg.mixes)
    self.assertFalse(augment.AugmentConfig(mixup_alpha=0, cutmix_alpha=0).mixes)
    for bad, needle in [({'re_prob': 2.0}, 're_prob'), ({'crop_scale': (0.5, 0.1)}, 'crop_scale'),
                        ({'mixup_alpha': -1.0}, 'mixup_alpha'), ({'crop_pct': 0.0}, 'crop_pct'),
                        ({'randaugment': 'rand-m9'}, 'inc1'), ({'re_mode': 'x'}, 're_mode'),
                        ({'mixup': 0.8}, 'unknown')]:
      self.assertOneLineError(ConfigError, lambda b=bad: augment.AugmentConfig.from_config(b),
                              needle)


if __name__ == '__main__':
  absltest.main()
