#!/usr/bin/env bash
# The prepared accelerator check (a lent H100 / H200): benchmarks/throughput.py's `device`
# profile — the GPT-2 small text recipe in bf16, 8 sequences per device, with the official
# per-device regulariser counts (16 pivots / 16 OOD items / 16 shift sets per device; shift
# sets cut to 8, the sequences per device) — as named runs, each with its own timeout and
# output file (a late failure keeps the earlier results):
#   core    rope, learned, seqpe, seqpe-plain at 512: train step, cached evaluation (rope,
#           learned, seqpe), KV decoding (rope, seqpe), and profiler traces of 2 train steps
#           of rope, seqpe and seqpe-plain (traces_core.tgz: unpack it anywhere and read it
#           with benchmarks/trace_summary.py, or --shares --reference=rope for the parts)
#   shares  seqpe-noaux / -shift1 / -shift0 beside rope: where SeqPE's time goes
#   fused   attention dropout 0, so training takes the fused kernel too (cuDNN where JAX
#           picks it): rope, seqpe (auto = the concat form), seqpe with the shared bias as the
#           kernel's bias input (scalar_form=bias)
#   1024    rope, seqpe, seqpe-plain at length 1024
#   remat   unshifted seqpe steps under each aux.encoder_remat (full = the default here,
#           dots, none) beside rope: slower on CPU (README), unmeasured on a GPU
#
#   RUNS=core bash benchmarks/gpu_check.sh         # results under $OUT (or benchmarks/results/gpu)
#
# Sizing (measured on an H200, jax 0.11.2): a GPT-2 small train step compiles in 30-40 s
# (rope, learned) and 70-80 s (seqpe variants), so `core` takes about 7 minutes and one
# 15-minute device lease holds about two runs: `core` first, then `shares fused`.
#
# The recipe trains with attention dropout 0.1, which the fused kernels lack, so its TRAIN
# steps take the reference attention path (SeqPE's attn_scalar is then the layers' shared bias,
# scalar_form=auto); evaluation uses the fused kernel.
#
# Environment: RUNS (default "core"), PEAK_TFLOPS (dense bf16 peak for MFU; default the
# datasheet's 989 for H100 / H200 SXM), STEPS / REPEATS (timed steps per round / interleaved
# rounds, default 10 / 3).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
STEPS="${STEPS:-10}"
REPEATS="${REPEATS:-3}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
RUNS="${RUNS:-core}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/seqpe_gpu_jcc}"
export PYTHONUNBUFFERED=1

python - <<'EOF' 2>&1 | tee -a "$OUT_DIR/devices.txt"
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
    --steps=1 --repeats=1 --noeval --nodecode --output=/tmp/seqpe_smoke.json \
    > /tmp/seqpe_smoke.log 2>&1 || { tail -30 /tmp/seqpe_smoke.log; exit 2; }

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
TRACES=/tmp/seqpe_traces
for r in $RUNS; do
  case $r in
    core) run core 480 --length=512 --variants=rope,learned,seqpe,seqpe-plain \
              --eval_variants=rope,learned,seqpe --decode_variants=rope,seqpe \
              --trace_dir="$TRACES" --trace_variants=rope,seqpe,seqpe-plain ;;
    shares) run shares 300 --length=512 --noeval --nodecode \
              --variants=rope,seqpe-noaux,seqpe-shift1,seqpe-shift0 \
              --trace_dir="$TRACES" --trace_variants=seqpe-noaux ;;
    fused) run fused 300 --length=512 --noeval --nodecode \
              --variants="rope+$NOAD,seqpe+$NOAD,seqpe+$NOAD+$BIAS" ;;
    1024) run 1024 300 --length=1024 --noeval --nodecode --variants=rope,seqpe,seqpe-plain ;;
    remat) run remat 300 --length=512 --noeval --nodecode \
              --variants=rope,seqpe-shift0,seqpe-shift0+aux.encoder_remat=dots,seqpe-shift0+aux.encoder_remat=none ;;
    *) echo "unknown run $r" >&2; status=1 ;;
  esac
done
# Traces leave as one file (the device tool brings back few, shallow files).
[[ -d $TRACES ]] && tar czf "$OUT_DIR/traces_${RUNS// /_}.tgz" -C "$TRACES" .

python - "$OUT_DIR" <<'EOF' | tee -a "$OUT_DIR/devices.txt"
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
