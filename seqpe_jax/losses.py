"""SeqPE regularisers: the contrastive distance loss and the OOD distillation loss.

Both match the official criteria bit for bit in fp32 (method doc §5.5, §6.2;
checked against `../shared/parity/official_losses.npz`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def contrastive_loss(pivot_BxD: jax.Array, candidates_BxKxD: jax.Array, labels_B: jax.Array,
                     logit_scale: float = 1.0) -> jax.Array:
  """Mean cross-entropy of `logit_scale * <pivot, candidate_k>` against `labels`.

  The label is the index of the candidate nearest to the pivot in position
  space; raw (unnormalised) dot products, full vector (not split by heads).
  """
  logits_BxK = jnp.einsum('bd,bkd->bk', pivot_BxD.astype(jnp.float32),
                          candidates_BxKxD.astype(jnp.float32)) * logit_scale
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()


def _row_log_softmax_per_head(x_BxNxD: jax.Array, num_heads: int, scale: float) -> jax.Array:
  b, n, d = x_BxNxD.shape
  if d % num_heads:
    raise ValueError(f'ood_distillation_loss: width {d} is not divisible by num_heads={num_heads}')
  x_BxHxNxK = x_BxNxD.astype(jnp.float32).reshape(b, n, num_heads, d // num_heads).transpose(0, 2, 1, 3)
  sim_BxHxNxN = jnp.einsum('bhik,bhjk->bhij', x_BxHxNxK, x_BxHxNxK) * scale
  return jax.nn.log_softmax(sim_BxHxNxN, axis=-1)


def _kl_mean(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """PyTorch `kl_div(logq, logp, log_target=True, reduction='mean')`: element-wise mean."""
  return jnp.mean(jnp.exp(logp) * (logp - logq))


def ood_distillation_loss(teacher_BxNxD: jax.Array, student_BxNxD: jax.Array, num_heads: int,
                          beta: float = 1.0, logit_scale: float = 1.0) -> jax.Array:
  """Per-head symmetric KL between teacher and student similarity patterns.

  For each item and head, rows of `softmax(X_h X_hᵀ)` are compared. With
  `beta = 1` (the paper) only the teacher is detached:
  `KL(sg T || S) + KL(S || sg T)`; `1 - beta` weights the mirrored terms with
  the student detached. KL terms are element-wise means over `(B, H, N, N)`,
  i.e. the row-averaged KL divided by N, as the official code.
  """
  logt = _row_log_softmax_per_head(teacher_BxNxD, num_heads, logit_scale)
  logs = _row_log_softmax_per_head(student_BxNxD, num_heads, logit_scale)
  sg = jax.lax.stop_gradient
  loss = beta * (_kl_mean(sg(logt), logs) + _kl_mean(logs, sg(logt)))
  if beta != 1.0:
    loss = loss + (1.0 - beta) * (_kl_mean(logt, sg(logs)) + _kl_mean(sg(logs), logt))
  return loss
