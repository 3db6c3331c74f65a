r"""Long-context QA fine-tuning (the paper's QA SFT, method doc §8.2), offline.

Fine-tunes a trained LM run (`:init_from=<its workdir>`, same model / PE / tokenizer) on
BABILong-style prompts — bAbI qa1/qa2 facts hidden at random sentence boundaries in held-out
Gutenberg filler — at the fine-tuning length (the "1x" set), with the loss on the answer
tokens (+ terminator) only, as the official SFT. Then
`python benchmarks/long_context.py` evaluates exact match at 1x..16x that length.

CPU scale (fine-tunes the default `configs/lm_wikitext2.py` byte-level LM at 512 bytes):
  python -m seqpe_jax.main --config=configs/lm_wikitext2.py --workdir=runs/wt2
  python -m seqpe_jax.main --config=configs/qa_babilong.py:init_from=runs/wt2 --workdir=runs/qa
  (`:pe=rope` etc. for a baseline: the LM run must use the same PE)
Paper scale (the official `ours_gpt2_qa.sh`: GPT-2 small from the WikiText-103 run, length
1024, batch 128 = 16 x 4 GPUs x 2 accumulation, lr 5e-5, 100 warm-up steps, linear decay,
10k steps, no weight decay, clip 5, bf16; SeqPE settings inherited, 16 pivots / OOD items /
shift sets per device, shift pool 160):
  python -m seqpe_jax.main --config=configs/qa_babilong.py:scale=paper,init_from=$LM --workdir=$W
`:source=passkey` fine-tunes on passkey retrieval; `--config.data.sft.source=jsonl
--config.data.sft.train_file=<squad_qa train.jsonl>` on the paper's own SQuAD-QA files.
"""

import ml_collections

from configs import common, lm_wikitext103, lm_wikitext2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, pe='seqpe', init_from='', scale='cpu', source='babilong', steps=0)
  if a.scale == 'cpu':
    c = lm_wikitext2.get_config(f'pe={a.pe}')
    c.train.update(steps=a.steps or 300, batch_size=16, seq_len=512, log_every=25,
                   checkpoint_every=100)
    c.optim.update(lr=5e-4, warmup_steps=20, schedule='linear', min_lr_ratio=0.0)
    c.eval.update(lengths=(512, 1024, 2048), max_tokens=16384, batch_size=2)
  elif a.scale == 'paper':
    c = lm_wikitext103.get_config(f'pe={a.pe}')
    c.train.update(steps=a.steps or 10_000, batch_size=128, grad_accum=2, seq_len=1024,
                   log_every=50, checkpoint_every=1000, eval_every=0, keep_best=False)
    c.optim.update(lr=5e-5, warmup_steps=100, schedule='linear', min_lr_ratio=0.0)
    # The QA script's overrides: 16 per device (x 4 GPUs), shift pool 160.
    c.aux.update(num_pivots=64, ood_items=64, shift_sets=64, shift_pool=160)
    c.eval.update(lengths=(1024, 2048, 4096, 8192, 16384), checkpoint='latest')
  else:
    raise ValueError(f'unknown scale {a.scale!r}; use cpu or paper')
  c.init_from = a.init_from
  c.data.sft.update(source=a.source)
  return c
