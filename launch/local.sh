#!/usr/bin/env bash
# One host (CPU, or all local GPUs/TPU chips in one process):
#   bash launch/local.sh --config=configs/lm_wikitext2.py --workdir=runs/wt2 [--config.x=y ...]
# Several processes on this machine (a multi-host rehearsal; N processes x D devices each):
#   NPROC=2 DEVICES_PER_PROC=4 bash launch/local.sh --config=configs/smoke.py --workdir=runs/mp \
#       --config.mesh.data=2 --config.mesh.fsdp=4
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${NPROC:-1}"
if [[ "$NPROC" == 1 ]]; then
  exec python -m seqpe_jax.main "$@"
fi
# CPU rehearsal of the multi-controller runtime: each process gets its own fake devices and
# joins a local coordinator (seqpe_jax/distributed.py reads the SEQPE_* variables).
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROC:-1}"
export SEQPE_COORDINATOR="localhost:${PORT:-12355}" SEQPE_NUM_PROCESSES="$NPROC"
pids=()
for ((i = 0; i < NPROC; i++)); do
  SEQPE_PROCESS_ID=$i python -m seqpe_jax.main --distributed "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
