#!/usr/bin/env bash
# Start the same training command on every worker of a Cloud TPU VM pod slice.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE --config=configs/lm_wikitext103.py --workdir=/mnt/shared/wt103
#
# Steps: copy this checkout to every worker, install requirements + jax[tpu] once (set
# SETUP=0 to skip), then run `python -m seqpe_jax.main --distributed ...` on all workers at
# once. jax.distributed.initialize() discovers the pod topology by itself; each host reads its
# rows of every global batch; process 0 writes logs; orbax writes checkpoints collectively
# (the workdir must be one directory every host sees: a Filestore/NFS mount or a gcsfuse-mounted
# bucket; gs:// URLs are not supported). Preemption (SIGTERM / the TPU maintenance
# event) checkpoints and exits with code 75: rerun the same command to resume.
# Create the slice first, e.g.:
#   gcloud compute tpus tpu-vm create TPU_NAME --zone=ZONE --accelerator-type=v4-32 \
#       --version=tpu-ubuntu2204-base
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE --config=... --workdir=... [--config.key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-seqpe_jax}"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
tar -C "$REPO" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/seqpe_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/seqpe_jax.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" --worker=all
ssh_all "mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf /tmp/seqpe_jax.tgz"
if [[ "${SETUP:-1}" == 1 ]]; then
  ssh_all "cd ~/$REMOTE_DIR && pip install -q -r requirements.txt && pip install -q -U 'jax[tpu]'"
fi
printf -v ARGS '%q ' "$@"
ssh_all "cd ~/$REMOTE_DIR && SEQPE_DISTRIBUTED=1 python3 -m seqpe_jax.main $ARGS"
