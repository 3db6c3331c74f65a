#!/usr/bin/env bash
# The runs behind benchmarks/results/seqpe_investigation/*.md (README "Results"): 400 steps of
# configs/lm_wikitext2.py, seed 0 unless the variant sets another. Every SeqPE variant names its
# aux.max_position and aux.shift_rate, so the table does not depend on the shipped defaults.
# 'seqpe' here is the paper's setting (10000 / 0.1). Each run takes 2-5 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/../../.."
python benchmarks/compare_pes.py --root=runs/inv/wikitext-2_400 --override=train.steps=400 \
  --variants='seqpe=pe.type=seqpe,aux.max_position=10000,aux.shift_rate=0.1;default-s1=pe.type=seqpe,aux.max_position=10000,aux.shift_rate=0.1,seed=1;mp1280=pe.type=seqpe,aux.max_position=1280,aux.shift_rate=0.1;seqpe-mp2560=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.1;mp2560-s1=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.1,seed=1;mp2560-noshift=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0;mp2560-noaux=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.1,aux.contrastive_weight=0,aux.ood_weight=0;mp2560-ood1=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.1,aux.ood_weight=1.0;seqpe-qknone=pe.type=seqpe,aux.max_position=10000,aux.shift_rate=0.1,pe.seqpe.pe_qk=none;seqpe-qknone-mp2560=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.1,pe.seqpe.pe_qk=none;mp10000-shift03=pe.type=seqpe,aux.max_position=10000,aux.shift_rate=0.3;mp2560-shift03=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.3;mp2560-shift03-s1=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.3,seed=1;mp2560-shift05=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.5;alibi;rope'
cp runs/inv/wikitext-2_400/comparison.md benchmarks/results/seqpe_investigation/wikitext-2_400.md
python benchmarks/compare_pes.py --root=runs/inv/gutenberg_400 --override=train.steps=400 \
  --override=data.name=gutenberg --variants='seqpe=pe.type=seqpe,aux.max_position=10000,aux.shift_rate=0.1;seqpe-mp2560=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.1;mp2560-shift03=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.3;mp2560-shift03-s1=pe.type=seqpe,aux.max_position=2560,aux.shift_rate=0.3,seed=1;alibi;rope'
cp runs/inv/gutenberg_400/comparison.md benchmarks/results/seqpe_investigation/gutenberg_400.md
