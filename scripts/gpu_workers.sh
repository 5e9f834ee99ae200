#!/bin/bash
# One worker process per GPU of this machine, each seeing its own GPU only, all on one study storage:
#
#   scripts/gpu_workers.sh python main.py --mode hyperopt                        # every GPU nvidia-smi lists
#   GPUS=0,1 scripts/gpu_workers.sh python main.py --mode sweep-agent --sweep-id ID
#
# The default storages, journal files under logs/hyperopt/ and logs/sweeps/, are shared safely by the
# processes of one machine; workers on several machines need a database ([Hyperopt] storage, --storage;
# scripts/sweep_agents.slurm for Slurm). Each hyperopt worker runs [Hyperopt] n_trials more trials.
# Worker K writes to logs/gpu_worker_K.log. Ctrl-C or SIGTERM is passed on to every worker as SIGTERM,
# on which a training saves a checkpoint and stops. The script waits for every worker and exits with
# the first non-zero exit code (130 or 143 when it was itself stopped by Ctrl-C or SIGTERM).
set -uo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: [GPUS=0,1,...] scripts/gpu_workers.sh COMMAND [ARGS...]" >&2
    exit 2
fi
if [[ -n "${GPUS:-}" ]]; then
    IFS=, read -ra gpus <<< "$GPUS"
else
    mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
fi
if [[ ${#gpus[@]} -eq 0 ]]; then
    echo "scripts/gpu_workers.sh: no GPU found by nvidia-smi; name them with GPUS=0,1,..." >&2
    exit 2
fi

mkdir -p logs
threads=$(( $(nproc) / ${#gpus[@]} ))
pids=()
for gpu in "${gpus[@]}"; do
    CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))} \
        "$@" > "logs/gpu_worker_$gpu.log" 2>&1 &
    pids+=($!)
    echo "worker on GPU $gpu: pid $!, log logs/gpu_worker_$gpu.log"
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM

status=0
for pid in "${pids[@]}"; do
    while true; do
        wait "$pid"
        code=$?
        kill -0 "$pid" 2>/dev/null || break  # wait returned for a trapped signal while the worker runs on
    done
    if [[ $status -eq 0 && $code -ne 0 ]]; then status=$code; fi
done
exit $status
