"""Resuming: a run killed at any point and started again with the same command ends with the same val loss, bit
for bit on the CPU, as a run never interrupted; a finished run is kept as it is, whatever is asked again."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import config_of, main, train
from tests.test_train import argv, options, shards  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_resuming_a_finished_evaluated_run_keeps_every_file_as_it_is(options, tmp_path, capsys):
    train(config_of(*argv(options)))
    run_dir = tmp_path / "runs" / "run"
    results = json.loads((run_dir / "results.json").read_text())
    results["core"] = {"core": 0.125, "tasks": []}  # as eval_core.py adds it
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    before = folder_bytes(run_dir)
    main(argv(options, resume=run_dir / "checkpoint.pt"))
    printed = capsys.readouterr().out
    assert f"{run_dir} is finished" in printed and "nothing to resume, nothing changed" in printed
    assert folder_bytes(run_dir) == before  # core is still there, and nothing else moved either


def test_a_run_killed_after_its_final_checkpoint_only_validates_on_resume(options, tmp_path):
    """Stopped at a target val loss: the final checkpoint knows, so a resume (results.json not yet written when
    the process died) neither trains past the target nor changes the result."""
    whole = train(config_of(*argv(options, steps=8, val_every=2, target_val_loss=100.0)))
    assert whole["status"] == "target_reached" and whole["steps"] == 2
    run_dir = tmp_path / "runs" / "run"
    (run_dir / "results.json").unlink()
    resumed = train(config_of(*argv(options, steps=8, val_every=2, target_val_loss=100.0,
                                    resume=run_dir / "checkpoint.pt")))
    assert resumed["status"] == "target_reached" and resumed["steps"] == 2
    assert resumed["val_loss"] == whole["val_loss"] and resumed["training_time_s"] == whole["training_time_s"]


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable checkpoint (an empty file)"),
    (b"garbage \x00\x01 not a checkpoint", "not a readable checkpoint (torch.load"),
    (None, "not a train_gpt.py checkpoint"),  # a torch file, but not one of train_gpt.py's
])
def test_a_garbage_or_empty_resume_file_is_one_line_and_nothing_is_written(options, tmp_path, content, message):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    if content is None:
        torch.save({"weights": torch.zeros(2)}, run_dir / "checkpoint.pt")
    else:
        (run_dir / "checkpoint.pt").write_bytes(content)
    before = folder_bytes(run_dir)
    with pytest.raises(SystemExit) as exc:
        main(argv(options, resume=run_dir / "checkpoint.pt"))
    text = str(exc.value.code)
    assert text.startswith("error: --resume=") and message in text and "\n" not in text, text
    assert folder_bytes(run_dir) == before


# -----------------------------------------------------------------------------
# speedrun.sh: kill -9 in the middle of training, the same command again, the same val loss


def copy_repo(dest):
    """The repository's code in dest, without data, runs or git (speedrun.sh writes into its own folder)."""
    skip = {".git", ".venv", "runs", "raw", "tokens", "tokenizers", "eval_fixture", "__pycache__", ".pytest_cache"}
    shutil.copytree(REPO, dest, ignore=lambda folder, names: [n for n in names if n in skip])
    # .venv: this interpreter, and set-up's stamp for the pinned dependencies, so setup.sh installs nothing
    (dest / ".venv" / "bin").mkdir(parents=True)
    python = dest / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    stamp = hashlib.sha256((dest / "pyproject.toml").read_bytes() + b"test\n").hexdigest()[:16]
    (dest / ".venv" / f".installed-{stamp}").touch()
    return dest


TINY = ("--depth=2 --model_dim=32 --head_dim=16 --seq_len=64 --short_window=16 --device_batch=4 "
        "--total_batch_tokens=256 --steps=32 --warmup_steps=2 --warmup_timing_steps=1 --val_tokens=2048 --val_every=16")


def speedrun_env(corpus, **changes):
    env = {k: v for k, v in os.environ.items() if k not in ("RUN_ID", "SEEDS", "PRESET", "EXTRAS", "EVAL_BUNDLE_DIR")}
    return dict(env, NUM_GPUS="0", DATASET="local", SOURCE=str(corpus), VOCAB_SIZE="512", TRACK="gpt2-core",
                TRAIN_ARGS=TINY, SAVE_EVERY="4", EVAL_ARGS="--tasks copa --max-per-task 4 --bpb-tokens 2048 --no-samples",
                GPT2_RANKS="/nonexistent", OMP_NUM_THREADS="1", **changes)


def speedrun(repo, env):
    done = subprocess.run(["bash", "speedrun.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def last_losses(log_path):
    """step -> the last train loss logged for it (a resumed run logs again the steps after its checkpoint)."""
    losses = {}
    for line in Path(log_path).read_text().splitlines():
        if line.startswith("step:") and "train_loss:" in line:
            fields = dict(field.split(":", 1) for field in line.split() if ":" in field)
            losses[int(fields["step"].split("/")[0])] = fields["train_loss"]
    return losses


def test_speedrun_killed_mid_training_and_run_again_matches_the_uninterrupted_run(corpus, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    env = speedrun_env(corpus)
    started = subprocess.Popen(["bash", "speedrun.sh"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not any("step:6/32 train_loss" in log.read_text() for log in repo.glob("runs/speedrun_*/seed0/log.txt")):
        assert started.poll() is None and time.time() < deadline, "the run ended or stalled before step 6"
        time.sleep(0.01)
    os.killpg(started.pid, signal.SIGKILL)  # the whole pipeline at once, as a lost node would
    started.wait()
    run_dir, = (log.parent for log in repo.glob("runs/speedrun_*/seed0/log.txt"))  # named by the command
    assert not (run_dir / "results.json").exists()
    assert "step:32/32" not in (run_dir / "log.txt").read_text()

    out = speedrun(repo, env)  # the same command again
    assert f"{run_dir.relative_to(repo)} was interrupted; resuming from" in out
    # one seed on a target track: a note and a report, no record (and no half-built record folder)
    assert "a gpt2-core record needs 5 runs" in out and (run_dir.parent / "report.md").exists()
    assert not list(run_dir.parent.glob("*record*"))
    log = (run_dir / "log.txt").read_text()  # resumed from step 4, not trained again from step 0
    assert "resumed from" in log and log.count("step:1/32 train_loss") == 1 and log.count("step:5/32 train_loss") == 2
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["steps"] == 32 and "core" in resumed

    # the uninterrupted run: the command speedrun.sh ran (the log's first command line), into another folder
    command = next(line for line in log.splitlines() if line.startswith("command: ")).split()[3:]
    done = subprocess.run([sys.executable, "train_gpt.py", *command, "--out_dir=runs/whole", "--run_id=seed0"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = json.loads((repo / "runs" / "whole" / "seed0" / "results.json").read_text())
    assert resumed["val_loss"] == whole["val_loss"] and resumed["val_bpb"] == whole["val_bpb"]
    assert last_losses(run_dir / "log.txt") == last_losses(repo / "runs" / "whole" / "seed0" / "log.txt")

    before = folder_bytes(run_dir)
    out = speedrun(repo, env)  # and once more: a finished, evaluated run is kept as it is
    assert "is trained; keeping it" in out and "is evaluated; keeping it" in out and "== train" not in out
    assert folder_bytes(run_dir) == before
    report = (run_dir.parent / "report.md").read_text()  # the stages of every call: the training is still there
    calls = set(re.findall(r"^\| (\S+Z) \|", report, re.M))  # the killed one's finished stages, then two more
    assert len(calls) == 3 and report.count("| train: ") == 1 and report.count("| tokenize: ") == 3


def test_a_resume_only_continues_the_weights_its_own_run_saved(options, tmp_path):
    """Another run's weights swapped into the checkpoint (a finished model under a short run's name) are refused, in
    one line, before anything is written; the run's own checkpoint resumes."""
    from harness.config import ConfigError
    train(config_of(*argv(options, stop_after=3)))
    run_dir = tmp_path / "runs" / "run"
    log = (run_dir / "log.txt").read_text()
    assert re.search(r"^checkpoint: step:3 weights_sha256:[0-9a-f]{64}$", log, re.M)
    path = run_dir / "checkpoint.pt"
    own = path.read_bytes()
    state = torch.load(path, weights_only=True)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, path)
    with pytest.raises(ConfigError, match="are not the ones this run saved last"):
        train(config_of(*argv(options, resume=path)))
    assert (run_dir / "log.txt").read_text() == log
    path.write_bytes(own)
    assert train(config_of(*argv(options, resume=path)))["steps"] == 6
