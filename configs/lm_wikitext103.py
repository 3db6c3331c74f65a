r"""The paper's text recipe: GPT-2 small + SeqPE on WikiText-103 (accelerators).

As the official `runs/ours_gpt2_wt103.sh` (method doc §7.2, §8.1, §9.1): GPT-2 small
(12 x 768, 12 heads, dropout 0.1 on embeddings / residuals / attention probabilities, tied
head) trained from scratch at 512 tokens (`:len=1024` for 1024) on raw WikiText-103 with the
GPT-2 byte-level BPE; SeqPE injected with attn_scalar through one shared pe_qk, 5 digits
(positions < 20,000 regularised); AdamW lr 5e-5, 4,000 warm-up steps then linear decay to 0
at 100k steps, no weight decay, separate clipping (5.0) of the encoder; validation perplexity
at 512 every 5,000 steps keeps the best model, which is evaluated at 1x..32x the training
length (+ 32768) with token and word perplexity.

Attention: the fused kernel (cuDNN flash on GPU) has no attention-probability dropout, so
training steps take the reference (einsum) path while `model.attn_dropout` > 0 (the official
trainer also trains with eager attention); evaluation uses the fused kernel (official: SDPA).

Data: put the official raw WikiText-103 files `wiki.{train,valid,test}.raw` in
`<data dir>/wikitext-103/` and the GPT-2 tokenizer files (`vocab.json`, `merges.txt` of
openai-community/gpt2) where `data.bpe_vocab` / `data.bpe_merges` point. Only the tokenised
valid/test files ship in ../shared/data (`:data=wikitext-103` reads `wiki.*.tokens`, evaluation
only). Or `--config.data.name=tfds:wikitext103`.

Single host, 4-8 GPUs:
  python -m seqpe_jax.main --config=configs/lm_wikitext103.py --workdir=$WORKDIR \
      --config.data.bpe_vocab=/path/gpt2/vocab.json --config.data.bpe_merges=/path/gpt2/merges.txt
TPU pod (all workers):
  bash launch/tpu_pod.sh $TPU_NAME $ZONE --config=configs/lm_wikitext103.py --workdir=/mnt/shared/wt103
SLURM GPU cluster:
  sbatch launch/gpu_slurm.sbatch --config=configs/lm_wikitext103.py --workdir=$WORKDIR
Baselines: `:pe=rope`, `:pe=alibi`, `:pe=learned`, `:pe=sinusoidal`, `:pe=nope`.
"""

import ml_collections

from configs import common, lm_wikitext2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, pe='seqpe', len=512, steps=100_000, data='wikitext-103-raw')
  c = lm_wikitext2.get_config(f'pe={a.pe}')
  c.seed = 10086
  c.model.update(num_layers=12, width=768, num_heads=12, dropout=0.1, attn_dropout=0.1,
                 tie_embeddings=True, dtype='bfloat16', attention_impl='fused')
  c.pe = common.pe_config(a.pe, max_digits=5, width=768, heads=12, dropout=0.1)
  # The official samplers run per GPU: 16 pivots, 16 OOD items and 16 shift sets on each of
  # its 4 GPUs, i.e. 64 of each per global step (candidates and OOD points are per item).
  # `--config.aux.counts_per_device=True` with 16/16/16 scales them with the data-parallel size.
  c.aux = common.aux_config(max_position=20000, num_pivots=64, ood_items=64, shift_sets=64)
  c.train.update(steps=a.steps, batch_size=128, seq_len=a.len, log_every=100,
                 checkpoint_every=5000, keep_checkpoints=3, eval_every=5000, keep_best=True)
  c.optim = common.optim_config(lr=5e-5, warmup_steps=4000, schedule='linear', min_lr_ratio=0.0,
                                b2=0.999, clip_norm=5.0, pe_clip_norm=5.0)
  c.data.update(name=a.data, tokenizer='gpt2', eval_split='valid')
  c.eval.update(lengths=tuple(a.len * m for m in (1, 2, 4, 8, 16, 32)) + (
                    (32768,) if a.len * 32 < 32768 else ()),
                splits=('valid', 'test'), max_tokens=0, batch_size=1, checkpoint='best')
  return c
