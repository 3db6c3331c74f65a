#!/usr/bin/env bash
# One short, prepared accelerator check (a lent H100 / H200): benchmarks/throughput.py's
# `device` profile — the GPT-2 small text recipe in bf16, 8 sequences per device, with the
# official per-device regulariser counts (16 pivots / 16 OOD items / 16 shift sets per device;
# shift sets cut to 8, the sequences per device) — as four runs, each with its own timeout and
# output file (a late failure keeps the earlier results), most important first:
#   core    rope, learned, seqpe, seqpe-plain at 512: train step, cached eval, KV decode;
#           seqpe+scalar_form=bias: the same train step, evaluated with the shared bias
#           as the fused kernel's bias input (auto evaluates with the concat form)
#   fused   attention dropout 0, so training takes the fused kernel too (cuDNN where JAX
#           picks it): rope, seqpe (auto = concat), seqpe with the shared bias as kernel input
#   shares  seqpe-noaux / -shift1 / -shift0 beside rope: where SeqPE's time goes
#   1024    rope, seqpe, seqpe-plain at length 1024
#
#   bash benchmarks/gpu_check.sh                 # results under $OUT (or benchmarks/results/gpu)
#
# The recipe trains with attention dropout 0.1, which the fused kernels lack, so its TRAIN
# steps take the reference attention path (train cudnn: False; SeqPE's attn_scalar is then the
# layers' shared bias, scalar_form=auto); evaluation uses the fused kernel.
#
# Environment: PEAK_TFLOPS (dense bf16 peak for MFU; default the datasheet's 989 for H100 /
# H200 SXM), STEPS / REPEATS (timed steps per round / interleaved rounds, default 10 / 3),
# RUNS (default "core fused shares 1024").
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
STEPS="${STEPS:-10}"
REPEATS="${REPEATS:-3}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
RUNS="${RUNS:-core fused shares 1024}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/seqpe_gpu_jcc}"
export PYTHONUNBUFFERED=1

python - <<'EOF' 2>&1 | tee "$OUT_DIR/devices.txt"
import jax
d = jax.devices()
print(f'jax {jax.__version__}: {len(d)} x {d[0].device_kind} ({d[0].platform})')
assert d[0].platform in ('gpu', 'cuda'), 'no GPU visible to JAX'
EOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "error: no GPU visible to JAX" >&2; exit 2; }
echo "peak for MFU: $PEAK_TFLOPS TFLOP/s (MFU = (6 N + 12 layers width length) tokens/s / peak)" \
  | tee -a "$OUT_DIR/devices.txt"

# A smoke run first (seconds): a broken environment fails here, not after minutes of compiling.
timeout 120 python benchmarks/throughput.py --config=configs/smoke.py --variants=seqpe,rope \
    --steps=1 --repeats=1 --noeval --nodecode --output="$OUT_DIR/smoke.json" \
    > "$OUT_DIR/log_smoke.txt" 2>&1 || { tail -30 "$OUT_DIR/log_smoke.txt"; exit 2; }

status=0
run() {  # run <name> <timeout> <throughput.py flags...>
  local name=$1 limit=$2; shift 2
  echo "=== $name ==="
  timeout "$limit" python benchmarks/throughput.py --profile=device --per_device_counts \
      --steps="$STEPS" --repeats="$REPEATS" --peak_tflops="$PEAK_TFLOPS" \
      --output="$OUT_DIR/throughput_$name.json" "$@" 2>&1 | tee "$OUT_DIR/log_$name.txt"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then echo "$name failed (rc $rc): see log_$name.txt" >&2; status=1; fi
}
NOAD=model.attn_dropout=0 BIAS=pe.seqpe.scalar_form=bias
for r in $RUNS; do
  case $r in
    core) run core 220 --length=512 --variants="rope,learned,seqpe,seqpe-plain,seqpe+$BIAS" \
              --eval_variants="rope,learned,seqpe,seqpe+$BIAS" --decode_variants=rope,seqpe ;;
    fused) run fused 120 --length=512 --noeval --nodecode \
              --variants="rope+$NOAD,seqpe+$NOAD,seqpe+$NOAD+$BIAS" ;;
    shares) run shares 120 --length=512 --noeval --nodecode \
              --variants=rope,seqpe-noaux,seqpe-shift1,seqpe-shift0 ;;
    1024) run 1024 80 --length=1024 --noeval --nodecode --variants=rope,seqpe,seqpe-plain ;;
    *) echo "unknown run $r" >&2; status=1 ;;
  esac
done

python - "$OUT_DIR" <<'EOF' | tee "$OUT_DIR/cudnn.txt"
import glob, json, sys
for f in sorted(glob.glob(f'{sys.argv[1]}/throughput_*.json')):
  res = json.load(open(f))
  print(f)
  for r in res['rows']:
    mfu = '-' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%"
    print(f"  {r['variant']:>58}: {r['ms_per_step']:.1f} ms/step, x RoPE {r['ratio_rope'] or 0:.3f}, "
          f"MFU {mfu}, train cudnn {r['hlo_cudnn']}, eval cudnn 1x {r.get('eval_hlo_cudnn_1x')} "
          f"4x {r.get('eval_hlo_cudnn_4x')}, device peak {r['device_peak_bytes']}")
EOF
exit $status
