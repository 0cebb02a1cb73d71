"""Records: a valid record passes; every kind of tampering fails with its reason; the leaderboard escapes what a
record says and is byte-identical when regenerated."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from records.__main__ import main as records_main
from records.leaderboard import write_leaderboard
from records.record import new_record, validate
from tests.test_train import options, run, shards  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
TRACKS = {"schema_version": 1, "tracks": [
    dict(id="below", description="val loss below 100", hardware=None, metric="val_loss", direction="below",
         target=100.0, rank_by="training_time_s", min_runs=3, alpha=0.01),
    dict(id="many", description="needs 5 runs", hardware=None, metric="val_loss", direction="below", target=100.0,
         rank_by="training_time_s", min_runs=5, alpha=0.01),
    dict(id="budget", description="within 1e12 FLOPs", hardware=None, metric="val_bpb", direction="lowest",
         budget_flops=1e12, rank_by="val_bpb", min_runs=1),
    dict(id="tiny-budget", description="within 1e6 FLOPs", hardware=None, metric="val_bpb", direction="lowest",
         budget_flops=1e6, rank_by="val_bpb", min_runs=1),
]}


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards, tokenizer_dir):  # noqa: F811
    """Three tiny runs (seeds 0-2), and a git repository where commit A holds the train_gpt.py that made them and
    commit B another one; the runs are relabelled as made at commit A."""
    root = tmp_path_factory.mktemp("records")
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train_gpt.py").write_text((REPO / "train_gpt.py").read_text())
    git(repo, "add", "train_gpt.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "A")
    commit_a = git(repo, "rev-parse", "HEAD")
    (repo / "train_gpt.py").write_text((REPO / "train_gpt.py").read_text() + "# a change\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "B")
    commit_b = git(repo, "rev-parse", "HEAD")
    opts = dict(train_files=f"{shards}/train_*.bin", val_files=f"{shards}/val_*.bin", tokenizer=str(tokenizer_dir),
                depth=2, model_dim=32, head_dim=16, seq_len=64, short_window=16, device_batch=2,
                total_batch_tokens=256, steps=4, warmup_steps=2, warmup_timing_steps=1, val_tokens=2048,
                val_every=0, out_dir=str(root / "runs"), save_final="false")
    dirs = []
    for seed in range(3):
        run(opts, run_id=f"seed{seed}", seed=seed)
        dirs.append(root / "runs" / f"seed{seed}")
        relabel(dirs[-1], commit_a)
    tracks = root / "tracks.json"
    tracks.write_text(json.dumps(TRACKS))
    return {"dirs": dirs, "repo": repo, "a": commit_a, "b": commit_b, "tracks": tracks, "root": root}


def relabel(run_dir, commit):
    """Rewrites a run's commit in its log and results.json (as if it had been made at that commit)."""
    log = run_dir / "log.txt"
    log.write_text(re.sub(r'^git: \{"commit": "[^"]*"', f'git: {{"commit": "{commit}"', log.read_text(), flags=re.M))
    results = json.loads((run_dir / "results.json").read_text())
    results["git"]["commit"] = commit
    (run_dir / "results.json").write_text(json.dumps(results))


def make(runs, tmp_path, track="below", dirs=None, **kwargs):
    out = new_record(track, "test", [str(d) for d in (dirs or runs["dirs"])], out=str(tmp_path / "record"),
                     tracks_file=str(runs["tracks"]), **kwargs)
    return Path(out)


def failures(runs, record):
    problems, _ = validate(str(record), str(runs["tracks"]), repo=str(runs["repo"]))
    return problems


def test_a_valid_record_passes(runs, tmp_path):
    record = make(runs, tmp_path)
    assert failures(runs, record) == []
    saved = json.loads((record / "results.json").read_text())
    assert saved["test"]["p_value"] < 0.01 and saved["commit"] == runs["a"] and len(saved["runs"]) == 3
    assert sorted(p.name for p in (record / "logs").iterdir()) == ["seed0.txt", "seed1.txt", "seed2.txt"]
    assert "p = " in (record / "statistics.md").read_text() and "Command (from the first log)" in (record / "README.md").read_text()


def test_a_budget_record_passes_and_one_over_budget_fails(runs, tmp_path):
    assert failures(runs, make(runs, tmp_path / "ok", track="budget")) == []
    problems = failures(runs, make(runs, tmp_path / "over", track="tiny-budget"))
    assert len(problems) == 1 and "over the budget of 1e+06 model FLOPs: seed0, seed1, seed2" in problems[0]


def edit_json(record, change):
    path = record / "results.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_an_edited_metric_in_the_json_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d["runs"][1].update(val_loss=d["runs"][1]["val_loss"] - 0.01))
    (problem,) = failures(runs, record)
    assert problem.startswith(str(record / "logs" / "seed1.txt")) and "final val_loss" in problem


def test_an_edited_summary_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d["summary"]["training_time_s"].update(mean=0.001))
    assert any("summary of training_time_s does not match its runs" in p for p in failures(runs, record))


def test_an_edited_log_line_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    log = record / "logs" / "seed2.txt"
    text = log.read_text()
    line = next(l for l in text.splitlines() if l.startswith("step:3/4 train_loss"))
    faster = re.sub(r"step_ms:[0-9.]+", "step_ms:0.01", line)
    log.write_text(text.replace(line, faster))
    (problem,) = failures(runs, record)
    assert problem.startswith(str(log)) and "the step times sum to" in problem


def test_a_log_whose_source_does_not_match_the_commit_fails(runs, tmp_path):
    dirs = []
    for d in runs["dirs"]:
        copy = tmp_path / "runs" / d.name
        shutil.copytree(d, copy)
        relabel(copy, runs["b"])  # commit B's train_gpt.py differs from the source in the logs
        dirs.append(copy)
    problems = failures(runs, make(runs, tmp_path, dirs=dirs))
    assert len(problems) == 3 and all("does not match train_gpt.py at commit" in p for p in problems)


def test_a_commit_outside_the_repository_is_noted_not_failed(runs, tmp_path):
    record = make(runs, tmp_path)
    problems, notes = validate(str(record), str(runs["tracks"]), repo=str(tmp_path))  # not a git repository
    assert problems == [] and "not compared" in notes[0]


def test_too_few_runs_fail(runs, tmp_path):
    (problem,) = failures(runs, make(runs, tmp_path, track="many"))
    assert "3 runs; the track needs at least 5" in problem


def test_a_p_value_above_alpha_fails(runs, tmp_path):
    losses = [json.loads((d / "results.json").read_text())["val_loss"] for d in runs["dirs"]]
    tracks = json.loads(runs["tracks"].read_text())
    tracks["tracks"][0]["target"] = sum(losses) / 3 + 1e-4  # barely above the mean: no evidence at p < 0.01
    path = tmp_path / "tracks.json"
    path.write_text(json.dumps(tracks))
    record = new_record("below", "test", [str(d) for d in runs["dirs"]], out=str(tmp_path / "r"), tracks_file=str(path))
    problems, _ = validate(record, str(path), repo=str(runs["repo"]))
    assert len(problems) == 1 and "is not below" in problems[0] and "at p < 0.01: p = " in problems[0]


def test_a_missing_log_and_a_log_outside_logs_fail(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d["runs"][0].update(log="../../etc/passwd"))
    (record / "logs" / "seed1.txt").unlink()
    problems = failures(runs, record)
    assert any("seed0: its log ../../etc/passwd is not in logs/" in p for p in problems)
    assert any("seed1: its log logs/seed1.txt is not in logs/" in p for p in problems)


def test_runs_from_two_commits_cannot_make_a_record(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["dirs"][0], other)
    relabel(other, runs["b"])
    with pytest.raises(Exception, match="a record is one commit's runs"):
        make(runs, tmp_path, dirs=[runs["dirs"][1], other])


# -----------------------------------------------------------------------------
# The leaderboard and compare


def test_leaderboard_escapes_hostile_strings_and_is_byte_identical_on_regeneration(runs, tmp_path, monkeypatch):
    records = tmp_path / "records"
    hostile = '<script>alert("x")</script> | [link](javascript:alert(1)) & `code`'
    for track in ("below", "budget"):
        new_record(track, "hostile", [str(d) for d in runs["dirs"]], out=str(records / track / "2026-01-01_hostile"),
                   description=hostile, tracks_file=str(runs["tracks"]), date="2026-01-01")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\ntext before\n")
    monkeypatch.setattr("records.leaderboard.validate", lambda path, tracks: validate(path, tracks, repo=str(runs["repo"])))
    write_leaderboard(str(records), str(readme), str(runs["tracks"]))
    page, board = (records / "leaderboard.html").read_text(), readme.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "](javascript" not in board  # the link syntax is escaped: no clickable link
    assert "<script>" not in board and "\\|" in board and "text before" in board
    assert page.count("<table>") == 2 and "<svg" in page  # a table per track with records; a chart for budgets
    write_leaderboard(str(records), str(readme), str(runs["tracks"]))
    assert (records / "leaderboard.html").read_text() == page and readme.read_text() == board


def test_compare_prints_welch_numbers_and_a_verdict(runs, capsys):
    dirs = [str(d) for d in runs["dirs"]]
    assert records_main(["compare", "--a", *dirs, "--b", *dirs]) == 0
    out = capsys.readouterr().out
    assert "training_time_s: A" in out and "Welch t = 0.000" in out and "no significant difference" in out


def test_every_record_in_the_repository_validates():
    assert records_main(["validate", "--all"]) == 0


def test_a_record_filed_under_the_wrong_folder_fails(runs, tmp_path):
    out = new_record("below", "test", [str(d) for d in runs["dirs"]], out=str(tmp_path / "budget" / "2026-01-01_other"),
                     tracks_file=str(runs["tracks"]), date="2026-01-01")
    problems = failures(runs, out)
    assert len(problems) == 1 and "belongs in below/2026-01-01_test, not budget/2026-01-01_other" in problems[0]
