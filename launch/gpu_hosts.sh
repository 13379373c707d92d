#!/usr/bin/env bash
# Run rlx on several GPU hosts over SSH, one process per host, forming one jax.distributed cluster.
# Usage: launch/gpu_hosts.sh "HOST0 HOST1 ..." CONFIG [section.key=value ...]
# HOST0 is the coordinator. Each host needs this checkout at the same path with rlx installed.
# Environment: RLX_PORT (coordinator port, default 12355), RLX_PYTHON (default python).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 \"HOST0 HOST1 ...\" CONFIG [section.key=value ...]" >&2
  exit 2
fi
read -r -a hosts <<< "$1"
config="$2"; shift 2
overrides="$*"
port="${RLX_PORT:-12355}"
python="${RLX_PYTHON:-python}"
workdir="$(pwd)"
logdir="runs/launch-logs"
mkdir -p "$logdir"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for rank in "${!hosts[@]}"; do
  host="${hosts[$rank]}"
  ssh "$host" "cd $workdir && \
    RLX_COORDINATOR_ADDRESS=${hosts[0]}:$port RLX_NUM_PROCESSES=${#hosts[@]} RLX_PROCESS_ID=$rank \
    $python -m rlx.launch --config $config parallel.distributed.mode=explicit $overrides" \
    > "$logdir/$host.log" 2>&1 &
  pids+=("$!")
  echo "started rank $rank on $host (log: $logdir/$host.log)"
done

status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
