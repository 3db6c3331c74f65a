#!/usr/bin/env bash
# Quality checks of SeqPE's cost changes (README "Performance"), 2026-12-04, the 2-core CPU VM,
# seqpe at 400 steps on both corpora, seeds 0-2, as benchmarks/lm_extrapolation.py's quick
# profile runs them (pinned, two at a time):
#
# tree_400.*: the shipped defaults after the change (encoder on the digit-prefix tree, the
#   shared attn_scalar bias): same function at this config's encoder dropout 0, so the same
#   quality as the committed lm_extrapolation rows up to float rounding.
python benchmarks/lm_extrapolation.py --profile=quick --root=runs/lmx_tree \
    --output=benchmarks/results/seqpe_cost_quality/tree_400.json --only='/400/seqpe/'
# half_400.*: half the regulariser samples (8 pivots x 33 candidates, 8 OOD items x 32
#   points; the records' `overrides` do not list these two, the runs' config.json do):
#   the cost lever that was measured and rejected.
python benchmarks/lm_extrapolation.py --profile=quick --root=runs/lmx_half \
    --output=benchmarks/results/seqpe_cost_quality/half_400.json --only='/400/seqpe/' \
    --override=aux.num_pivots=8 --override=aux.ood_items=8
