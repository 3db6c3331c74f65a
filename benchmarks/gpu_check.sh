#!/usr/bin/env bash
# One short, prepared accelerator check (a lent H100 / H200): the `device` profile of
# benchmarks/throughput.py (GPT-2 small recipe, bf16, attention_impl=fused, 8 sequences per
# device) for seqpe, rope and learned at each length, MFU against the peak, and whether the
# compiled train / eval steps call cuDNN attention (`cudnn` in the compiled HLO text, e.g.
# the `__cudnn$fmha` custom call).
#
#   bash benchmarks/gpu_check.sh                      # results under $OUT (or benchmarks/results/gpu)
#   PEAK_TFLOPS=989 LENGTHS="1024" bash benchmarks/gpu_check.sh
#   VARIANTS="seqpe,rope,learned,seqpe-noaux,seqpe+model.attn_dropout=0" bash benchmarks/gpu_check.sh
#
# Parameters (environment):
#   PEAK_TFLOPS  bf16 dense peak for MFU; default by device kind: H100 989 (SXM datasheet),
#                H200 790 (bf16 as measured on the lent H200), otherwise 0 (MFU skipped)
#   LENGTHS      training lengths, default "512 1024"
#   VARIANTS     default "seqpe,rope,learned"
#   STEPS / REPEATS   timed steps per round / interleaved rounds, default 10 / 3
#   RUN_TIMEOUT  seconds per length before giving up on it, default 280
#   EXTRA        more throughput.py flags, e.g. "--per_device_counts"
#
# Assumes a JAX with CUDA is importable (no installation here). The recipe trains with
# attention dropout 0.1, and the fused kernel has none, so the TRAIN step takes the reference
# attention path (expect train cudnn: False) while evaluation uses the fused kernel (expect
# eval cudnn: True); add the variant `seqpe+model.attn_dropout=0` to time fused training.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
LENGTHS="${LENGTHS:-512 1024}"
VARIANTS="${VARIANTS:-seqpe,rope,learned}"
STEPS="${STEPS:-10}"
REPEATS="${REPEATS:-3}"
RUN_TIMEOUT="${RUN_TIMEOUT:-280}"
EXTRA="${EXTRA:-}"

KIND="$(python - <<'EOF'
import jax
devs = jax.devices()
print(f'{devs[0].platform}|{devs[0].device_kind}|{len(devs)}')
EOF
)"
PLATFORM="${KIND%%|*}"; REST="${KIND#*|}"; DEVICE_KIND="${REST%|*}"; COUNT="${REST##*|}"
echo "jax devices: $COUNT x $DEVICE_KIND ($PLATFORM)" | tee "$OUT_DIR/devices.txt"
if [[ "$PLATFORM" != "gpu" && "$PLATFORM" != "cuda" ]]; then
  echo "error: no GPU visible to JAX (platform $PLATFORM); is jax[cuda12] installed?" >&2
  exit 2
fi
if [[ -z "${PEAK_TFLOPS:-}" ]]; then
  case "$DEVICE_KIND" in
    *H200*) PEAK_TFLOPS=790 ;;
    *H100*) PEAK_TFLOPS=989 ;;
    *) PEAK_TFLOPS=0 ;;
  esac
fi
echo "peak for MFU: $PEAK_TFLOPS TFLOP/s" | tee -a "$OUT_DIR/devices.txt"

status=0
for LEN in $LENGTHS; do
  JSON="$OUT_DIR/throughput_device_${LEN}.json"
  echo "=== length $LEN ==="
  # shellcheck disable=SC2086
  if ! timeout "$RUN_TIMEOUT" python benchmarks/throughput.py --profile=device --length="$LEN" \
      --variants="$VARIANTS" --steps="$STEPS" --repeats="$REPEATS" \
      --peak_tflops="$PEAK_TFLOPS" --output="$JSON" $EXTRA 2>&1 | tee "$OUT_DIR/log_${LEN}.txt"; then
    echo "length $LEN failed or timed out (see $OUT_DIR/log_${LEN}.txt)" >&2
    status=1
    continue
  fi
  python - "$JSON" <<'EOF' | tee "$OUT_DIR/cudnn_${LEN}.txt"
import json, sys
res = json.load(open(sys.argv[1]))
for r in res['rows']:
  print(f"{r['variant']:>28}: train cudnn {r['hlo_cudnn']}, eval cudnn 1x "
        f"{r.get('eval_hlo_cudnn_1x')} 4x {r.get('eval_hlo_cudnn_4x')}, "
        f"{r['ms_per_step']:.1f} ms/step, MFU "
        f"{'-' if r['mfu'] is None else format(100 * r['mfu'], '.1f') + '%'}, "
        f"device peak {r['device_peak_bytes']}")
EOF
done
exit $status
