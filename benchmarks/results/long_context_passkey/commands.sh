#!/usr/bin/env bash
# Passkey retrieval past the fine-tuning length at CPU scale (README "Long-context evaluation"):
# the default byte-level LM per PE (configs/lm_wikitext2.py, 800 steps at 64 bytes), fine-tuned
# on passkey prompts at 384 bytes (configs/qa_babilong.py:source=passkey, loss on the answer
# only; 2000 steps of 16 prompts drawn from 20,000, so keys are not memorised), then greedy
# accuracy (the first integer generated equals the key) at 1x-8x of 384 and five needle
# depths, with our KV cache and, for SeqPE, the released code's cache behaviour
# (--official_cache_bias). 300 steps at 512 bytes taught the answer format but no retrieval
# (0% everywhere, every PE).
set -euo pipefail
R=${R:-runs/long_context_passkey}
for pe in seqpe alibi rope; do
  [[ -f $R/lm_$pe/extrapolation.json ]] || \
    python -m seqpe_jax.main --config=configs/lm_wikitext2.py:pe=$pe --workdir=$R/lm_$pe
  python -m seqpe_jax.main \
      --config=configs/qa_babilong.py:pe=$pe,init_from=$R/lm_$pe,source=passkey,steps=2000 \
      --workdir=$R/pk384_$pe --config.train.seq_len=384 --config.data.sft.num_examples=20000 \
      '--config.eval.lengths=(384,768)'
done
python benchmarks/long_context.py --workdirs=$R/pk384_seqpe,$R/pk384_alibi,$R/pk384_rope \
    --output=benchmarks/results/long_context_passkey --evals=passkey --decoder=cached \
    --official_cache_bias --multipliers=1,2,4,8 --samples=10 --depths=0,0.25,0.5,0.75,1
