r"""The paper's text recipe: GPT-2 small + SeqPE on WikiText-103 (accelerators).

GPT-2 small (12 x 768, 12 heads, dropout 0.1) trained from scratch at 512
tokens (`:len=1024` for 1024), SeqPE injected with attn_scalar through one
shared pe_qk, 5 digits (positions < 20,000 regularised), separate gradient
clipping of the encoder, evaluated at 1x..32x the training length
(method doc §7.2, §8.1, §9.1). WikiText-103 train is not shipped in
../shared/data: put `wiki.train.tokens` next to the valid/test files (or point
`--config.data.dir` at a full copy), or use `--config.data.name=tfds:wikitext103`.

Single host, 4-8 GPUs:
  python -m seqpe_jax.main --config=configs/lm_wikitext103.py --workdir=$WORKDIR
TPU pod (all workers):
  bash launch/tpu_pod.sh $TPU_NAME $ZONE --config=configs/lm_wikitext103.py --workdir=/mnt/shared/wt103
SLURM GPU cluster:
  sbatch launch/gpu_slurm.sbatch --config=configs/lm_wikitext103.py --workdir=$WORKDIR
Baselines: `:pe=rope`, `:pe=alibi`, `:pe=learned`, `:pe=sinusoidal`, `:pe=nope`.
"""

import ml_collections

from configs import common, lm_wikitext2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, pe='seqpe', len=512, steps=100_000)
  c = lm_wikitext2.get_config(f'pe={a.pe}')
  c.seed = 10086
  c.model.update(num_layers=12, width=768, num_heads=12, dropout=0.1, attn_dropout=0.1,
                 tie_embeddings=True, dtype='bfloat16', attention_impl='fused')
  c.pe = common.pe_config(a.pe, max_digits=5, width=768, heads=12, dropout=0.1)
  c.aux = common.aux_config(max_position=20000)
  c.train.update(steps=a.steps, batch_size=128, seq_len=a.len, log_every=100,
                 checkpoint_every=5000, keep_checkpoints=3)
  c.optim = common.optim_config(lr=5e-5, warmup_steps=4000, schedule='linear', min_lr_ratio=0.0,
                                b2=0.999, clip_norm=5.0, pe_clip_norm=5.0)
  c.data.update(name='wikitext-103', tokenizer='sentencepiece', vocab_size=32000)
  c.data.spm_model_type = 'bpe'
  c.eval.update(lengths=tuple(a.len * m for m in (1, 2, 4, 8, 16, 32)), splits=('valid', 'test'),
                max_tokens=0, batch_size=8)
  return c
