#!/usr/bin/env bash
# Passkey retrieval past the fine-tuning length at CPU scale (README "Long-context evaluation"):
# the default byte-level LM per PE (configs/lm_wikitext2.py, 800 steps at 64 bytes), fine-tuned
# on passkey prompts at 512 bytes (configs/qa_babilong.py:source=passkey, loss on the answer),
# then greedy accuracy at 1x-8x of 512 and five needle depths, our KV cache and, for SeqPE,
# the released code's cache behaviour (--official_cache_bias).
set -euo pipefail
R=${R:-runs/long_context_passkey}
for pe in seqpe alibi rope; do
  python -m seqpe_jax.main --config=configs/lm_wikitext2.py:pe=$pe --workdir=$R/lm_$pe
  python -m seqpe_jax.main --config=configs/qa_babilong.py:pe=$pe,init_from=$R/lm_$pe,source=passkey,steps=300 \
      --workdir=$R/pk_$pe
done
python benchmarks/long_context.py --workdirs=$R/pk_seqpe,$R/pk_alibi,$R/pk_rope \
    --output=benchmarks/results/long_context_passkey --evals=passkey --decoder=cached \
    --official_cache_bias --multipliers=1,2,4,8 --samples=10 --depths=0,0.25,0.5,0.75,1
