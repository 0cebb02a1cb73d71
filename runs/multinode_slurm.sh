#!/usr/bin/env bash
# Training across several machines under SLURM: one torchrun per node (srun), c10d rendezvous on the first node.
#
#   sbatch --nodes=2 runs/multinode_slurm.sh --preset=gpt2-core --run_id=d24_2x8
#
# Adjust the #SBATCH lines to the cluster (partition, account, time). Arguments go to train_gpt.py. GPUS is the
# number of GPUs per node (default 8). Every node needs the code, the venv and the data at the same paths.
#SBATCH --job-name=speedrun
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PYTHON=${PYTHON:-.venv/bin/python}
srun --ntasks-per-node=1 "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" \
    --nproc_per_node="${GPUS:-8}" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:${PORT:-29500}" \
    --rdzv_id="$SLURM_JOB_ID" --max_restarts=0 train_gpt.py "$@"
