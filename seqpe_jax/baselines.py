"""Closed-form baseline position encodings: sinusoids, RoPE variants, ALiBi, table resizing.

Pure functions of integer positions; the Flax wrappers live in `posenc.py`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


# ----------------------------------------------------------------------------- sinusoids

def sinusoidal_1d(positions_PxL: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
  """Transformer sinusoids, interleaved sin/cos (as the official `sin` baseline): `[P, L, dim]`."""
  half = dim // 2
  inv_freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * (-2.0 * math.log(base) / dim))
  ang_PxLxK2 = positions_PxL.astype(jnp.float32)[..., None] * inv_freq
  pe = jnp.stack([jnp.sin(ang_PxLxK2), jnp.cos(ang_PxLxK2)], axis=-1)
  pe = pe.reshape(*positions_PxL.shape, 2 * half)
  if dim % 2:
    pe = jnp.pad(pe, [(0, 0)] * (pe.ndim - 1) + [(0, 1)])
  return pe


def sincos_2d(coords_PxNx2: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
  """MoCo-v3 / big_vision 2-D sincos: quarters [sin x, cos x, sin y, cos y]: `[P, N, dim]`."""
  if dim % 4:
    raise ValueError(f'sincos2d needs a width divisible by 4, got {dim}')
  q = dim // 4
  omega = 1.0 / temperature ** (jnp.arange(q, dtype=jnp.float32) / q)
  y = coords_PxNx2[..., 0].astype(jnp.float32)[..., None] * omega
  x = coords_PxNx2[..., 1].astype(jnp.float32)[..., None] * omega
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=-1)


# ----------------------------------------------------------------------------- RoPE

def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling: str = 'none',
                  factor: float = 1.0, original_length: int = 2048,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> np.ndarray:
  """Inverse frequencies `[head_dim // 2]` for RoPE with optional context scaling.

  scaling: 'none'; 'linear' (position interpolation: all frequencies / factor);
  'ntk' (NTK-aware: theta * factor**(d/(d-2))); 'yarn' (YaRN frequency ramp:
  high frequencies kept, low ones interpolated; pair with `yarn_mscale`).
  """
  d = head_dim
  if scaling == 'ntk':
    theta = theta * factor ** (d / (d - 2))
  inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
  if scaling == 'linear':
    inv = inv / factor
  elif scaling == 'yarn':
    def dim_for(rotations: float) -> float:
      return d * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(theta))
    lo = max(math.floor(dim_for(beta_fast)), 0)
    hi = min(math.ceil(dim_for(beta_slow)), d // 2 - 1)
    ramp = np.clip((np.arange(d // 2) - lo) / max(hi - lo, 1e-3), 0.0, 1.0)
    extrapolate = 1.0 - ramp  # 1: keep the original frequency (high-frequency dims)
    inv = inv / factor * (1.0 - extrapolate) + inv * extrapolate
  elif scaling not in ('none', 'ntk'):
    raise ValueError(f'unknown RoPE scaling {scaling!r}; use none, linear, ntk or yarn')
  return inv.astype(np.float32)


def yarn_mscale(factor: float) -> float:
  """YaRN attention temperature: multiply q and k by it (logits by its square)."""
  return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def rope_angles(positions_PxL: jax.Array, inv_freq: np.ndarray | jax.Array) -> jax.Array:
  """Rotation angles `[P, L, K/2]` of 1-D positions."""
  return positions_PxL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)


def axial_rope_angles(coords_PxNx2: jax.Array, head_dim: int, theta: float = 100.0) -> jax.Array:
  """Axial 2-D RoPE angles `[P, N, K/2]`: first half of the pairs rotate with the
  row, second half with the column (each axis uses K/4 frequencies)."""
  if head_dim % 4:
    raise ValueError(f'rope2d needs a head dim divisible by 4, got {head_dim}')
  inv = 1.0 / theta ** (np.arange(0, head_dim // 2, 2, dtype=np.float32) / (head_dim // 2))
  row = coords_PxNx2[..., 0].astype(jnp.float32)[..., None] * inv
  col = coords_PxNx2[..., 1].astype(jnp.float32)[..., None] * inv
  return jnp.concatenate([row, col], axis=-1)


def rope_mixed_init_freqs(key: jax.Array, num_heads: int, head_dim: int,
                          theta: float = 10.0) -> jax.Array:
  """RoPE-Mixed initial frequencies `[2, H, K/2]` (x and y components).

  Magnitudes follow the axial schedule; each head's frequency vectors start
  at a random rotation angle (Heo et al., 2024).
  """
  mag = 1.0 / theta ** (np.arange(0, head_dim, 4, dtype=np.float32) / head_dim)  # [K/4]
  angles_H = jax.random.uniform(key, (num_heads, 1), maxval=2 * math.pi)
  fx = jnp.concatenate([mag * jnp.cos(angles_H), mag * jnp.cos(math.pi / 2 + angles_H)], -1)
  fy = jnp.concatenate([mag * jnp.sin(angles_H), mag * jnp.sin(math.pi / 2 + angles_H)], -1)
  return jnp.stack([fx, fy])


def rope_mixed_angles(coords_PxNx2: jax.Array, freqs_2xHxK2: jax.Array) -> jax.Array:
  """Per-head angles `[P, N, H, K/2]` = x·f_x + y·f_y (learnable frequencies)."""
  c = coords_PxNx2.astype(jnp.float32)
  return (c[..., 1, None, None] * freqs_2xHxK2[0] + c[..., 0, None, None] * freqs_2xHxK2[1])


def apply_rope(x_BxLxHxK: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates channel pairs (i, i + K/2) (split-half convention) by `angles`.

  `angles` is `[B|1, L, K/2]` (shared by heads) or `[B|1, L, H, K/2]`.
  """
  if angles.ndim == 3:
    angles = angles[:, :, None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


# ----------------------------------------------------------------------------- ALiBi

def alibi_slopes(num_heads: int) -> np.ndarray:
  """Press et al. slopes for any head count (non-powers of two interleave 2n's slopes)."""
  def pow2(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  n = 2 ** math.floor(math.log2(num_heads))
  slopes = pow2(n)
  if n < num_heads:
    slopes += pow2(2 * n)[0::2][: num_heads - n]
  return np.asarray(slopes, dtype=np.float32)


def alibi_bias(q_pos_PxL: jax.Array, k_pos_PxS: jax.Array, slopes_H: np.ndarray | jax.Array,
               causal: bool = True) -> jax.Array:
  """Additive logits `[P, H, L, S]`: `-m_h (i - j)` (causal) or `-m_h |i - j|`."""
  dist = q_pos_PxL[:, :, None].astype(jnp.float32) - k_pos_PxS[:, None, :].astype(jnp.float32)
  if not causal:
    dist = jnp.abs(dist)
  return -jnp.asarray(slopes_H)[None, :, None, None] * dist[:, None]


# ----------------------------------------------------------------------------- resizing

_TORCH_CUBIC_A = -0.75  # PyTorch's bicubic (and OpenCV's); jax.image.resize's 'cubic' uses -0.5.


def torch_bicubic_matrix(in_size: int, out_size: int, a: float = _TORCH_CUBIC_A) -> np.ndarray:
  """`[out, in]` float32 weights of PyTorch's `upsample_bicubic2d` along one axis.

  align_corners=False: src = (dst + 0.5) * in / out - 0.5 (not clamped), taps
  floor(src) - 1 .. floor(src) + 2 with indices clamped to [0, in - 1] (replicated
  border), Keys cubic with A = `a`; no antialiasing (also when downsampling).
  """
  dst = np.arange(out_size, dtype=np.float64)
  src = (dst + 0.5) * (in_size / out_size) - 0.5
  i0 = np.floor(src)
  t = src - i0
  # Keys kernel at the four tap distances 1 + t, t, 1 - t, 2 - t.
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1           # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a      # 1 < |x| < 2
  coeffs_Ox4 = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)
  taps_Ox4 = np.clip(i0[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
  w_OxI = np.zeros((out_size, in_size), np.float64)
  np.add.at(w_OxI, (np.repeat(np.arange(out_size), 4), taps_Ox4.ravel()), coeffs_Ox4.ravel())
  return w_OxI.astype(np.float32)


def torch_bicubic_resize(x_hxwxC: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """`[H, W, C]` → `[h, w, C]` as `F.interpolate(mode='bicubic', align_corners=False)`."""
  h, w = shape
  wh_OxI = torch_bicubic_matrix(x_hxwxC.shape[0], h)
  ww_OxI = torch_bicubic_matrix(x_hxwxC.shape[1], w)
  x = jnp.asarray(x_hxwxC, jnp.float32)
  hi = jax.lax.Precision.HIGHEST  # the default TPU/GPU matmul precision would round to bf16
  y = jnp.einsum('hH,HWC->hWC', wh_OxI, x, precision=hi)
  y = jnp.einsum('wW,hWC->hwC', ww_OxI, y, precision=hi)
  return y.astype(x_hxwxC.dtype)


def torch_bicubic_resize_1d(table_LxC: jax.Array, length: int) -> jax.Array:
  """`[L, C]` → `[length, C]` with the same kernel (a `[L, 1]` image resized to `[length, 1]`)."""
  w_OxI = torch_bicubic_matrix(table_LxC.shape[0], length)
  y = jnp.einsum('lL,LC->lC', w_OxI, jnp.asarray(table_LxC, jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(table_LxC.dtype)


def _is_torch_bicubic(method: str) -> bool:
  return method in ('bicubic', 'cubic')


def _jax_method(method: str) -> str:
  """'bicubic_jax' (jax.image.resize's A = -0.5 cubic) → 'cubic'; other names pass through."""
  return 'cubic' if method == 'bicubic_jax' else method


def resize_table_1d(table_LxC: jax.Array, length: int, method: str = 'linear') -> jax.Array:
  """Resizes a `[L, C]` position table to `[length, C]` (half-pixel centres, as
  `torch.nn.functional.interpolate(align_corners=False)`); identity if equal.

  'bicubic' is PyTorch's kernel (A = -0.75); 'bicubic_jax' is jax.image's (A = -0.5).
  """
  if table_LxC.shape[0] == length:
    return table_LxC
  if _is_torch_bicubic(method):
    return torch_bicubic_resize_1d(table_LxC, length)
  return jax.image.resize(table_LxC, (length, table_LxC.shape[1]), method=_jax_method(method),
                          antialias=False)


def resize_grid(table_hxwxC: jax.Array, shape: tuple[int, int], method: str = 'bicubic') -> jax.Array:
  """Resizes a `[H, W, C]` position grid to `[h, w, C]`; rectangular grids are fine.

  'bicubic' matches PyTorch (`F.interpolate(mode='bicubic')`, as timm/the official
  code resize ViT position tables); 'bicubic_jax' keeps jax.image.resize's cubic;
  'linear'/'bilinear' use jax.image.resize (same as PyTorch without antialias).
  """
  if tuple(table_hxwxC.shape[:2]) == tuple(shape):
    return table_hxwxC
  if _is_torch_bicubic(method):
    return torch_bicubic_resize(table_hxwxC, shape)
  return jax.image.resize(table_hxwxC, (*shape, table_hxwxC.shape[-1]),
                          method=_jax_method(method), antialias=False)
