"""A seconds-long run for tests: tiny GPT (or ViT with `:task=vit`) on real data."""

import ml_collections

from configs import common, lm_wikitext2, vit_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  task = common.parse_arg(arg, task='lm').task  # 'vit', 'task=vit'; unknown keys raise
  if task not in ('lm', 'vit'):
    raise ValueError(f'unknown smoke task {task!r}; use lm or vit')
  if task == 'vit':
    c = vit_cifar10.get_config()
    c.model.update(num_layers=1, width=32, num_heads=2)
    c.pe.seqpe.update(width=16, heads=2)
    c.aux.update(num_pivots=2, num_candidates=8, ood_items=2, ood_points=4, shift_sets=2)
    c.train.update(steps=4, batch_size=4, image_size=8, log_every=1, checkpoint_every=2)
    c.data.update(max_train_examples=64, max_eval_examples=16)
    c.eval.update(image_sizes=(8, 12), batch_size=8)
  else:
    c = lm_wikitext2.get_config()
    c.model.update(num_layers=1, width=32, num_heads=2)
    c.pe.seqpe.update(width=16, heads=2)
    c.aux.update(num_pivots=2, num_candidates=8, ood_items=2, ood_points=4, shift_sets=2)
    c.train.update(steps=4, batch_size=4, seq_len=16, log_every=1, checkpoint_every=2)
    c.eval.update(lengths=(16, 32), max_tokens=512, batch_size=4)
  c.optim.warmup_steps = 1
  return c
