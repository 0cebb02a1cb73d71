#!/usr/bin/env bash
# Training across several machines with torchrun's c10d rendezvous. Run this same command on every node; the nodes
# find each other through HEAD (one of them, reachable from all), and torchrun assigns the ranks.
#
#   HEAD=10.0.0.1 NNODES=2 bash runs/multinode_torchrun.sh --preset=gpt2-core --run_id=d24_2x8
#
# Environment: HEAD (required), NNODES (default 2), GPUS (per node, default 8), PORT (default 29500), RUN (the
# rendezvous id, the same on every node; default "speedrun"). Arguments go to train_gpt.py. Every node needs the
# code, the venv and the data at the same paths; rank 0 writes runs/<run_id>/ (put runs/ on shared storage to
# resume from any node). NCCL picks the network by itself; NCCL_SOCKET_IFNAME or NCCL_IB_HCA pin it if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HEAD:?set HEAD to the address of one node that every node can reach}"
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-2}" --nproc_per_node="${GPUS:-8}" \
    --rdzv_backend=c10d --rdzv_endpoint="$HEAD:${PORT:-29500}" --rdzv_id="${RUN:-speedrun}" --max_restarts=0 \
    train_gpt.py "$@"
