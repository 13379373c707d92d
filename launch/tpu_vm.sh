#!/usr/bin/env bash
# Run rlx on every worker of a Cloud TPU VM (single host or pod slice).
# Usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG [section.key=value ...]
# Needs: gcloud, authenticated, with access to the TPU VM. See launch/README.md.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [section.key=value ...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; config="$3"; shift 3
overrides="$*"
remote_dir="rlx"

# Ship the working tree (not the runs or the git history) to every worker.
tar czf /tmp/rlx-src.tgz --exclude=.git --exclude=runs --exclude='*.pyc' .
gcloud compute tpus tpu-vm scp /tmp/rlx-src.tgz "$tpu":/tmp/rlx-src.tgz --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  mkdir -p $remote_dir && tar xzf /tmp/rlx-src.tgz -C $remote_dir && cd $remote_dir
  pip install -q -e . 'jax[tpu]'
  # auto: JAX reads the pod's worker list and this worker's id from the TPU metadata.
  python -m rlx.launch --config $config parallel.distributed.mode=auto $overrides
"
