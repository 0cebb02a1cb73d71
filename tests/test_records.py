"""Records: a valid record passes; every kind of tampering fails with its reason; the leaderboard escapes what a
record says and is byte-identical when regenerated."""

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from records.__main__ import main as records_main, record_dirs
from records.leaderboard import write_leaderboard
from records.record import new_record, statistics_markdown, validate
from tests.core_fixture import TASKS as CORE_TASKS
from tests.test_train import as_a_crash, options, run, shards  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
EMPTY_DIFF = hashlib.sha256(b"").hexdigest()


def tracks_for(pins):
    """Test tracks; the ones that pin data pin the fixture's real tokenizer, val text and val bytes."""
    return {"schema_version": 1, "tracks": [
        dict(id="below", description="val loss below 100", hardware=None, metric="val_loss", direction="below",
             target=100.0, rank_by="training_time_s", min_runs=3, alpha=0.01,
             data=dict(tokenizer_sha256=pins["tokenizer_sha256"], vocab_size=512, val_tokens=2048)),
        dict(id="many", description="needs 5 runs", hardware=None, metric="val_loss", direction="below", target=100.0,
             rank_by="training_time_s", min_runs=5, alpha=0.01),
        dict(id="budget", description="within 1e12 FLOPs", hardware=None, metric="val_bpb", direction="lowest",
             budget_flops=1e12, rank_by="val_bpb", min_runs=1,
             data=dict(val_source_sha256=pins["val_source_sha256"], val_bytes=pins["val_bytes"], val_bytes_rel_tol=0.01)),
        dict(id="tiny-budget", description="within 1e6 FLOPs", hardware=None, metric="val_bpb", direction="lowest",
             budget_flops=1e6, rank_by="val_bpb", min_runs=1),
        dict(id="core", description="CORE above -1", hardware=None, metric="core", direction="above", target=-1.0,
             rank_by="training_time_s", min_runs=3, alpha=0.01,
             core=dict(bundle_zip_sha256="ab" * 32, baselines={t: v[3] for t, v in CORE_TASKS.items()})),
        dict(id="unpinned", description="a val set not pinned yet", hardware=None, metric="val_bpb",
             direction="lowest", budget_flops=1e12, rank_by="val_bpb", min_runs=1, data=dict(val_source_sha256=None)),
    ]}


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


COMMIT_DATE = "2025-06-01T12:00:00+00:00"  # before the records' dates: a record is never dated before its commit


def commit_all(repo, message, date=COMMIT_DATE):
    git(repo, "add", "-A")
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message],
                   capture_output=True, text=True, check=True,
                   env={**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    return git(repo, "rev-parse", "HEAD")


def data_identity(shards, tokenizer_dir, corpus, val_tokens=2048, seq_len=64):
    """The data line that train_gpt.py is to write (records/README.md), computed here from the fixture's files."""
    from data.shards import read_shard
    from data.tokenizer import load_tokenizer, sha256_file
    files = lambda paths: [{"name": p.name, "sha256": sha256_file(str(p))} for p in sorted(paths)]
    sources = sorted(corpus.glob("*.parquet"))
    scored = val_tokens // seq_len * seq_len
    val = np.asarray(read_shard(str(sorted(shards.glob("val_*.bin"))[0])))[1:scored + 1]
    from data.overlap import measure
    overlap = measure(sorted(map(str, shards.glob("train_*.bin"))), sorted(map(str, shards.glob("val_*.bin"))),
                      progress=False)
    return {"tokenizer_sha256": sha256_file(str(tokenizer_dir / "tokenizer.json")),
            "train_shards": files(shards.glob("train_*.bin")), "val_shards": files(shards.glob("val_*.bin")),
            "train_source": files(sources[:-1]), "val_source": files(sources[-1:]), "val_tokens": scored,
            "val_bytes": int(load_tokenizer(str(tokenizer_dir)).token_bytes()[val].sum()),
            "val_overlap": {key: overlap[key] for key in ("fraction", "ngram", "stride", "val_tokens_checked")}}


def checkout(repo, recipe_source):
    """A git repository (not yet committed) holding a recipe as train_gpt.py and the harness and data packages it
    runs on: where a record's commit comes from."""
    repo.mkdir()
    git(repo, "init", "-q")
    for package in ("harness", "data"):
        (repo / package).mkdir()
        for path in (REPO / package).glob("*.py"):
            (repo / package / path.name).write_text(path.read_text())
    (repo / "train_gpt.py").write_text(recipe_source)
    return repo


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards, tokenizer_dir, corpus):  # noqa: F811
    """Three tiny runs (seeds 0-2), and a git repository where commit A holds the code that made them (train_gpt.py,
    the harness it runs on and the data package the harness reads shards with) and commit B another train_gpt.py;
    the runs are relabelled as made at commit A from a clean tree, and their data lines are checked against the
    files' identity computed here."""
    root = tmp_path_factory.mktemp("records")
    repo = checkout(root / "repo", (REPO / "train_gpt.py").read_text())
    (repo / "eval_core.py").write_text((REPO / "eval_core.py").read_text())  # a replay of a CORE track evaluates
    (repo / "README.md").write_text("# the checkout\n")  # not code: a tree whose only change is here may validate
    commit_a = commit_all(repo, "A")
    (repo / "train_gpt.py").write_text((REPO / "train_gpt.py").read_text() + "# a change\n")
    commit_b = commit_all(repo, "B")
    opts = dict(train_files=f"{shards}/train_*.bin", val_files=f"{shards}/val_*.bin", tokenizer=str(tokenizer_dir),
                depth=2, model_dim=32, head_dim=16, seq_len=64, short_window=16, device_batch=2,
                total_batch_tokens=256, steps=4, warmup_steps=2, warmup_timing_steps=1, val_tokens=2048,
                val_every=0, out_dir=str(root / "runs"), save_final="false")
    data = data_identity(shards, tokenizer_dir, corpus)
    dirs = []
    for seed in range(3):
        run(opts, run_id=f"seed{seed}", seed=seed)
        dirs.append(root / "runs" / f"seed{seed}")
        relabel(dirs[-1], commit_a)
        logged = [l for l in (dirs[-1] / "log.txt").read_text().splitlines() if l.startswith("data: ")]
        assert logged == [f"data: {json.dumps(data)}"]  # train_gpt.py's data line, as computed here independently
    tracks = root / "tracks.json"
    pins = tracks_for({"tokenizer_sha256": data["tokenizer_sha256"], "val_bytes": data["val_bytes"],
                       "val_source_sha256": [f["sha256"] for f in data["val_source"]]})
    for track in pins["tracks"]:  # where a replay finds each track's data: the fixture's (absolute paths)
        track["replay_paths"] = {key: opts[key] for key in ("train_files", "val_files", "tokenizer")}
    tracks.write_text(json.dumps(pins))
    return {"dirs": dirs, "repo": repo, "a": commit_a, "b": commit_b, "tracks": tracks, "root": root, "opts": opts,
            "data": data}


def relabel(run_dir, commit, dirty=False, diff_sha256=EMPTY_DIFF):
    """Rewrites a run's git line and results.json (as if it had been made at that commit, from that tree)."""
    git_info = {"commit": commit, "dirty": dirty, "diff_sha256": diff_sha256}
    edit_log(run_dir / "log.txt", lambda l: f"git: {json.dumps(git_info)}" if l.startswith("git: ") else l)
    results = json.loads((run_dir / "results.json").read_text())
    results["git"] = git_info
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "git.diff").unlink(missing_ok=True)  # the diff of the checkout running the tests is not that tree's


def edit_log(path, change):
    """Rewrites the lines after the source: change(line) returns the line, a list of lines, or None to drop it."""
    text = path.read_text()
    source, sep, rest = text.partition("\n" + "=" * 100 + "\n")
    lines = []
    for line in rest.splitlines():
        new = change(line)
        lines += new if isinstance(new, list) else [] if new is None else [new]
    path.write_text(source + sep + "\n".join(lines) + "\n")


def replace_source(path, source):
    """A log as if written by another train_gpt.py source (the log holds the source, then a newline, then the rule)."""
    text = path.read_text()
    path.write_text(source + text[text.index("\n" + "=" * 100 + "\n"):])


def copy_runs(runs, tmp_path, dirs=None):
    out = []
    for d in dirs or runs["dirs"]:
        shutil.copytree(d, tmp_path / "runs" / d.name)
        out.append(tmp_path / "runs" / d.name)
    return out


def make(runs, tmp_path, track="below", dirs=None, **kwargs):
    """A record of the runs; runs of other seeds than 0..N-1 (a test's own) say so in seeds_note unless given."""
    dirs = [str(d) for d in (dirs or runs["dirs"])]
    seeds = sorted(json.loads((Path(d) / "results.json").read_text())["seed"] for d in dirs)
    note = None if seeds == list(range(len(seeds))) else "the test's own seeds"
    out = new_record(track, "test", dirs, out=str(tmp_path / "record"), tracks_file=str(runs["tracks"]),
                     repo=str(runs["repo"]), **{"author": "A. Tester", "seeds_note": note, **kwargs})
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


def test_a_commit_outside_the_repository_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    problems, _ = validate(str(record), str(runs["tracks"]), repo=str(tmp_path))  # not a git repository
    (problem,) = problems
    assert problem.startswith(str(record / "results.json")) and f"commit {runs['a']} is not in this repository" in problem


def test_too_few_runs_fail(runs, tmp_path):
    (problem,) = failures(runs, make(runs, tmp_path, track="many"))
    assert "3 runs; the track needs at least 5" in problem


def test_a_p_value_above_alpha_fails(runs, tmp_path):
    losses = [json.loads((d / "results.json").read_text())["val_loss"] for d in runs["dirs"]]
    tracks = json.loads(runs["tracks"].read_text())
    tracks["tracks"][0]["target"] = sum(losses) / 3 + 1e-4  # barely above the mean: no evidence at p < 0.01
    path = tmp_path / "tracks.json"
    path.write_text(json.dumps(tracks))
    record = new_record("below", "test", [str(d) for d in runs["dirs"]], out=str(tmp_path / "r"), tracks_file=str(path),
                        author="A. Tester")
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


def lowered(runs, tmp_path, shifts=(0.010, 0.012, 0.011)):
    """Copies of the runs, each with its val loss lowered a little: the same seeds, a consistent difference."""
    dirs = copy_runs(runs, tmp_path)
    for d, shift in zip(dirs, shifts):
        results = json.loads((d / "results.json").read_text())
        results["val_loss"] -= shift
        (d / "results.json").write_text(json.dumps(results))
    return [str(d) for d in dirs]


def test_compare_pairs_real_runs_by_seed_and_shows_their_commit(runs, tmp_path, capsys):
    assert records_main(["compare", "--a", *map(str, runs["dirs"]), "--b", *lowered(runs, tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"A: 3 runs (seeds 0, 1, 2), commit {runs['a'][:12]} clean",
                       f"B: 3 runs (seeds 0, 1, 2), commit {runs['a'][:12]} clean",
                       "settings: the arms ran the same code and settings: any difference between them is noise"]
    assert out[4] == "per seed, B - A: seed 0 -0.01, seed 1 -0.012, seed 2 -0.011"
    assert out[5].startswith("test: paired t-test, because both arms ran seeds 0, 1, 2: t(A - B) = 19.053, df = 2, p = ")
    assert out[5].endswith("-> B is better at alpha 0.01") and out[7].startswith("training time (secondary): A ")


def test_compare_takes_a_record_as_an_arm_once_it_validates(runs, tmp_path, capsys, monkeypatch):
    record = make(runs, tmp_path)
    argv = ["--tracks", str(runs["tracks"]), "compare", "--a", str(record), "--b", *lowered(runs, tmp_path)]
    assert records_main(argv) == 1  # validated against this repository, which does not hold the fixture's commit
    err = capsys.readouterr().err
    assert err.startswith(f"error: {record}: not a valid record (") and "is not in this repository" in err
    assert err.count("\n") == 1
    monkeypatch.setattr("records.compare.validate", functools.partial(validate, repo=str(runs["repo"])))
    assert records_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"A: {record} is a valid record (validated now)\n")
    assert "settings: the arms ran the same code and settings" in out  # the logs' config is results.json's
    assert "test: paired t-test, because both arms ran seeds 0, 1, 2" in out and "B is better" in out


KNOWN_INVALID = {}  # record folder -> why it cannot validate yet (made before the logs carried what is checked)


@pytest.mark.parametrize("record", sorted(str(Path(p).relative_to(REPO / "records")) for p in record_dirs()))
def test_every_record_in_the_repository_validates(record, request):
    if record in KNOWN_INVALID:  # strict: the day it validates, this entry must go
        request.applymarker(pytest.mark.xfail(reason=KNOWN_INVALID[record], strict=True))
    assert records_main(["validate", str(REPO / "records" / record)]) == 0


def test_a_record_filed_under_the_wrong_folder_fails(runs, tmp_path):
    out = new_record("below", "test", [str(d) for d in runs["dirs"]], out=str(tmp_path / "budget" / "2026-01-01_other"),
                     tracks_file=str(runs["tracks"]), date="2026-01-01")
    problems = failures(runs, out)
    assert len(problems) == 1 and "belongs in below/2026-01-01_test, not budget/2026-01-01_other" in problems[0]


# -----------------------------------------------------------------------------
# The holes: each tampering fails with a one-line reason naming the file


def lines_of(record, name="seed0"):
    return (record / "logs" / f"{name}.txt").read_text().splitlines()


def diff_of(repo, path, addition):
    """`git diff HEAD` of the tree with a line added to a file (the tree is put back)."""
    (repo / path).write_text((repo / path).read_text() + addition)
    diff = subprocess.run(["git", "-C", str(repo), "diff", "HEAD"], capture_output=True, check=True).stdout
    git(repo, "checkout", "-q", path)
    return diff


def test_a_log_from_a_modified_tree_needs_its_diff_and_the_diff_must_be_the_one_it_ran(runs, tmp_path):
    """A tree whose uncommitted change is not code (here the README) validates with the diff it logged beside its
    log; a diff that changes code is refused (FLOPs are counted only by committed code)."""
    repo = runs["repo"]
    git(repo, "checkout", "-q", runs["b"])  # leaves the repository as it was (B checked out)
    diff = diff_of(repo, "README.md", "tried locally\n")
    dirs = copy_runs(runs, tmp_path)
    for d in dirs:
        relabel(d, runs["b"], dirty=True, diff_sha256=hashlib.sha256(diff).hexdigest())
        replace_source(d / "log.txt", (REPO / "train_gpt.py").read_text() + "# a change\n")  # B's: the diff
    record = make(runs, tmp_path, dirs=dirs)                                                # changes no code
    problems = failures(runs, record)
    assert len(problems) == 3 and all("written from a modified tree" in p and "seed" in p.split(":")[0] for p in problems)
    for d in ("seed0", "seed1", "seed2"):
        (record / "logs" / f"{d}.diff").write_bytes(diff)
    (problem,) = failures(runs, record)  # the record must say its tree was modified, and what changed
    assert problem.endswith("'modified' lists no file, the runs' diffs change ['README.md']: a record says what its "
                            "tree changed, and only that")
    edit_json(record, lambda r: r.update(modified=["README.md"]))
    assert failures(runs, record) == []
    (record / "logs" / "seed1.diff").write_bytes(diff.replace(b"tried locally", b"tried elsewhere"))
    (problem,) = failures(runs, record)
    assert problem.startswith(str(record / "logs" / "seed1.diff")) and "is not the log's diff_sha256" in problem
    code = diff_of(repo, "train_gpt.py", "# tried locally\n")
    for d in ("seed0", "seed1", "seed2"):
        (record / "logs" / f"{d}.diff").write_bytes(code)
        edit_log(record / "logs" / f"{d}.txt", lambda l: l.replace(hashlib.sha256(diff).hexdigest(),
                                                                   hashlib.sha256(code).hexdigest()))
    problems = failures(runs, record)
    assert len(problems) == 3 and all(p.startswith(str(record / "logs")) and p.split(": ", 1)[1] == (
        "changes more than prose in plain files (train_gpt.py, as git applies it): commit the change, run again and "
        "make the record from that commit") for p in problems), problems
    shell = diff.replace(b"README.md", b"speedrun.sh")  # not Python, but it runs: only prose may change
    for d in ("seed0", "seed1", "seed2"):
        (record / "logs" / f"{d}.diff").write_bytes(shell)
        edit_log(record / "logs" / f"{d}.txt", lambda l: l.replace(hashlib.sha256(code).hexdigest(),
                                                                   hashlib.sha256(shell).hexdigest()))
    problems = failures(runs, record)
    assert len(problems) == 3 and all("speedrun.sh" in p and ("does not apply" in p or "more than prose" in p)
                                      for p in problems), problems


def test_a_record_from_a_modified_tree_says_so_and_the_leaderboard_shows_it(runs, tmp_path):
    from records.leaderboard import entry
    repo = runs["repo"]
    git(repo, "checkout", "-q", runs["b"])
    diff = diff_of(repo, "README.md", "tried locally\n")
    dirs = copy_runs(runs, tmp_path)
    for d in dirs:
        relabel(d, runs["b"], dirty=True, diff_sha256=hashlib.sha256(diff).hexdigest())
        replace_source(d / "log.txt", (REPO / "train_gpt.py").read_text() + "# a change\n")
        (d / "git.diff").write_bytes(diff)  # as train_gpt.py keeps it
    record = make(runs, tmp_path, dirs=dirs)
    saved = json.loads((record / "results.json").read_text())
    assert saved["modified"] == ["README.md"] and failures(runs, record) == []
    shown = entry(str(record), saved, json.loads(runs["tracks"].read_text())["tracks"][0], str(tmp_path))
    assert shown["cells"][1] == "test (modified tree: README.md)"


@pytest.mark.parametrize("edited, message", [
    (lambda line: line.startswith("done: "), "are not the last validation's"),  # the done line with the results
    (lambda line: " val_loss:" in line and line.startswith("step:"), "the done line's val_loss"),  # the validations
])
def test_a_better_val_loss_edited_into_the_results_and_a_log_line_fails(runs, tmp_path, edited, message):
    record = make(runs, tmp_path)
    run = json.loads((record / "results.json").read_text())["runs"][0]
    better = round(run["val_loss"] - 0.01, 6)
    edit_json(record, lambda d: d["runs"][0].update(val_loss=better))
    edit_log(record / "logs" / "seed0.txt", lambda l: re.sub(r"val_loss:\S+", f"val_loss:{better:.6f}", l)
             if edited(l) else l)
    (problem,) = failures(runs, record)
    assert problem.startswith(str(record / "logs" / "seed0.txt")) and message in problem


def test_a_faster_step_with_its_running_totals_edited_still_fails(runs, tmp_path):
    """Step 2 made 1 ms faster with its tok/s and every later running total: the validation line, the done line
    and results.json still hold the true time."""
    record = make(runs, tmp_path)

    def faster(line):
        if not line.startswith("step:") or "train_loss:" not in line:
            return line
        fields = dict(w.split(":", 1) for w in line.split() if ":" in w)
        step = int(fields["step"].split("/")[0])
        if step == 2:
            ms = float(fields["step_ms"]) - 1
            line = re.sub(r"step_ms:\S+", f"step_ms:{ms:.2f}", line)
            line = re.sub(r"tok/s:\S+", f"tok/s:{256 * 1000 / ms:.0f}", line)
        if step >= 2:
            line = re.sub(r"train_time_ms:\S+", f"train_time_ms:{float(fields['train_time_ms']) - 1:.0f}", line)
        return line

    edit_log(record / "logs" / "seed0.txt", faster)
    (problem,) = failures(runs, record)
    # which true total catches it first depends on how the run's times round where they are written: the
    # validation line's train_time_ms to 1 ms, the done line's training_time to 10 ms, results.json's not at all
    caught = [("the validation at step 4", "does not follow the step lines"),
              ("the done line's training_time", "is not the sum of the step times"),
              ("the step times sum to", "but results.json says")]
    assert problem.startswith(str(record / "logs" / "seed0.txt")) and any(
        first in problem and then in problem for first, then in caught), problem


def test_a_step_time_edited_without_its_tok_per_s_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed0.txt", lambda l: re.sub(r"step_ms:\S+", "step_ms:0.50", l)
             if l.startswith("step:1/") and "train_loss" in l else l)
    (problem,) = failures(runs, record)
    assert "line" in problem and ("tok/s:" in problem or "the step times sum to" in problem)


def test_missing_or_repeated_step_lines_fail(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed0.txt", lambda l: None if l.startswith("step:2/") and "train_loss" in l else l)
    lines = [l for l in lines_of(record, "seed1") if l.startswith("step:2/") and "train_loss" in l]
    edit_log(record / "logs" / "seed1.txt", lambda l: [l, lines[0]] if l == lines[0] else l)
    problems = failures(runs, record)
    assert len(problems) == 2 and all("must be consecutive" in p for p in problems)
    assert "step 3 follows step 1" in problems[0] and "step 2 follows step 2" in problems[1]


def test_two_runs_with_the_same_seed_fail(runs, tmp_path):
    dirs = copy_runs(runs, tmp_path)
    edit_log(dirs[1] / "log.txt", lambda l: l.replace('"seed": 1,', '"seed": 0,') if l.startswith("config: ") else l)
    results = json.loads((dirs[1] / "results.json").read_text())
    results["seed"] = 0
    (dirs[1] / "results.json").write_text(json.dumps(results))
    problems = failures(runs, make(runs, tmp_path, dirs=dirs))
    assert any("seed 0 is used by more than one run" in p for p in problems), problems


def test_runs_made_with_other_settings_or_on_other_data_fail(runs, tmp_path):
    """A record is one recipe over seeds: a genuine run with another lr, or one whose train shards differ, cannot
    join it (its mean time and t-test would describe no single command)."""
    run(dict(runs["opts"], out_dir=str(tmp_path / "runs")), run_id="other_lr", seed=2, matrix_lr=0.03)
    other = tmp_path / "runs" / "other_lr"
    relabel(other, runs["a"])
    (problem,) = failures(runs, make(runs, tmp_path, dirs=[*runs["dirs"][:2], other]))
    assert problem.endswith("runs seed0 and other_lr were made with other settings (matrix_lr): a record's runs "
                            "differ only in seed")
    dirs = copy_runs(runs, tmp_path)
    moved = lambda l: l.replace('"train_files": "', '"train_files": "/elsewhere') if l.startswith("config: ") else l
    edit_log(dirs[1] / "log.txt", moved)  # the same data in another folder (another machine): one recipe
    assert failures(runs, make(runs, tmp_path / "a", dirs=dirs)) == []
    data = dict(runs["data"], train_shards=[dict(f, sha256="0" * 64) for f in runs["data"]["train_shards"]])
    edit_log(dirs[2] / "log.txt", lambda l: f"data: {json.dumps(data)}" if l.startswith("data: ") else l)
    (problem,) = failures(runs, make(runs, tmp_path / "b", dirs=dirs))
    assert problem.endswith("runs seed0 and seed2 trained on other data (their data lines differ)")


def test_one_log_counted_twice_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    shutil.copyfile(record / "logs" / "seed0.txt", record / "logs" / "seed9.txt")
    edit_json(record, lambda d: d["runs"].append(dict(d["runs"][0], run_id="seed9", log="logs/seed9.txt", seed=9)))
    problems = failures(runs, record)
    assert any("seed 0 in the config, 9 in results.json" in p for p in problems)
    edit_log(record / "logs" / "seed9.txt", lambda l: l.replace('"seed": 0,', '"seed": 9,') if l.startswith("config") else l)
    problems = failures(runs, record)
    assert any("runs seed0 and seed9 are one run counted twice: the same train losses at every common step" in p
               for p in problems), problems
    edit_json(record, lambda d: d["runs"].__setitem__(3, dict(d["runs"][3], log="logs/seed0.txt")))
    (problem,) = failures(runs, record)
    assert "its run id or its log logs/seed0.txt is another run's too" in problem


def test_the_same_file_twice_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    shutil.copyfile(record / "logs" / "seed0.txt", record / "logs" / "seed1.txt")
    problems = failures(runs, record)
    assert any(p.startswith(str(record / "logs" / "seed1.txt")) for p in problems)


def test_a_run_on_another_tokenizer_or_val_size_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed0.txt", lambda l: l.replace(runs["data"]["tokenizer_sha256"], "0" * 64))
    edit_log(record / "logs" / "seed1.txt", lambda l: l.replace('"val_tokens": 2048', '"val_tokens": 1024')
             if l.startswith("config: ") else l)
    problems = failures(runs, record)
    assert any(p.startswith(str(record / "logs" / "seed0.txt")) and "is not the track's" in p for p in problems)
    assert any("val_tokens 1024 is not the track's 2048" in p for p in problems)


def test_train_and_val_data_that_overlap_fail(runs, tmp_path):
    record = make(runs, tmp_path)
    train = runs["data"]["train_shards"][0]["sha256"]
    edit_log(record / "logs" / "seed0.txt", lambda l: l.replace(runs["data"]["val_shards"][0]["sha256"], train))
    (problem,) = failures(runs, record)
    assert "the run trained on its validation data" in problem


def test_a_log_without_the_data_line_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed2.txt", lambda l: None if l.startswith("data: ") else l)
    (problem,) = failures(runs, record)
    assert problem.startswith(str(record / "logs" / "seed2.txt")) and "no data line" in problem


def test_a_budget_record_on_other_val_text_fails(runs, tmp_path):
    record = make(runs, tmp_path, track="budget")
    val_source = runs["data"]["val_source"][0]["sha256"]
    edit_log(record / "logs" / "seed0.txt", lambda l: l.replace(val_source, "1" * 64))
    bytes_ = runs["data"]["val_bytes"]
    edit_log(record / "logs" / "seed1.txt", lambda l: l.replace(f'"val_bytes": {bytes_}', f'"val_bytes": {bytes_ // 2}'))
    problems = failures(runs, record)
    assert len(problems) == 2 and "the val source" in problems[0] and "are not the track's" in problems[0]
    assert "val bytes scored; the track compares bits per byte on" in problems[1]


def test_a_track_that_does_not_pin_its_data_yet_accepts_no_record(runs, tmp_path):
    (problem,) = failures(runs, make(runs, tmp_path, track="unpinned"))
    assert problem.startswith(str(runs["tracks"])) and "does not pin val_source_sha256 yet" in problem


def with_core(runs, tmp_path, zip_sha="ab" * 32, drop=None, max_per_task="None"):
    """Copies of the runs with a CORE line appended as eval_core.py writes it (accuracies made up per seed)."""
    dirs = copy_runs(runs, tmp_path)
    for seed, d in enumerate(dirs):
        tasks = {t: round(0.3 + 0.01 * seed + 0.001 * i, 4) for i, t in enumerate(CORE_TASKS) if t != drop}
        centered = [(a - CORE_TASKS[t][3] / 100) / (1 - CORE_TASKS[t][3] / 100) for t, a in tasks.items()]
        core = sum(centered) / len(centered)
        with open(d / "log.txt", "a") as f:
            f.write(f"core:{core:.6f} tasks:{json.dumps(tasks)} max_per_task:{max_per_task} "
                    f"bundle_zip_sha256:{zip_sha}\n")
        results = json.loads((d / "results.json").read_text())
        results["core"] = {"core": core}
        (d / "results.json").write_text(json.dumps(results))
    return dirs


def test_a_core_record_needs_every_task_every_row_and_the_pinned_bundle(runs, tmp_path):
    assert failures(runs, make(runs, tmp_path / "ok", track="core", dirs=with_core(runs, tmp_path / "ok"))) == []
    (problem,) = set(p.split(": ", 1)[1] for p in failures(runs, make(
        runs, tmp_path / "a", track="core", dirs=with_core(runs, tmp_path / "a", drop="squad"))))
    assert "CORE over 21 tasks; the track's bundle has 22 (missing: squad; extra: none)" in problem
    problems = failures(runs, make(runs, tmp_path / "b", track="core",
                                   dirs=with_core(runs, tmp_path / "b", zip_sha="cd" * 32, max_per_task="100")))
    assert len(problems) == 6 and sum("on at most 100 rows per task" in p for p in problems) == 3
    assert sum(f"not the track's {'ab' * 32}" in p for p in problems) == 3


def test_a_core_score_that_is_not_the_mean_of_its_tasks_fails(runs, tmp_path):
    record = make(runs, tmp_path, track="core", dirs=with_core(runs, tmp_path))
    edit_log(record / "logs" / "seed0.txt", lambda l: re.sub(r'"squad": [0-9.]+', '"squad": 0.9', l))
    (problem,) = failures(runs, record)
    assert "is not the mean centered accuracy of its tasks" in problem


def test_flops_are_counted_by_this_checkouts_harness_not_the_records_commits(runs, tmp_path):
    """Commit C's harness counts twice the model's FLOPs: a record made at C that claims C's count is refused (the
    count is this checkout's harness applied to C's recipe, in a child process), and one that claims this checkout's
    count passes."""
    repo = runs["repo"]
    trace_source = (repo / "harness" / "trace.py").read_text()
    count = "            return flops\n"
    assert trace_source.count(count) == 1  # flops_per_token's meta-device count
    (repo / "harness" / "trace.py").write_text(trace_source.replace(count, "            return 2 * flops\n"))
    commit_c = commit_all(repo, "C")
    dirs = copy_runs(runs, tmp_path)
    for d in dirs:
        relabel(d, commit_c)
        replace_source(d / "log.txt", (repo / "train_gpt.py").read_text())  # C's train_gpt.py is B's
    record = make(runs, tmp_path, dirs=dirs)  # results.json and the log claim this checkout's count
    assert failures(runs, record) == []
    per_token = json.loads((record / "results.json").read_text())["runs"][0]["model_flops_per_token"]
    for name in ("seed0", "seed1", "seed2"):
        edit_log(record / "logs" / f"{name}.txt", lambda l: l.replace(f"{per_token:,} FLOPs/token", f"{2 * per_token:,} FLOPs/token"))
    edit_json(record, lambda d: [r.update(model_flops_per_token=2 * per_token, model_flops=2 * r["model_flops"])
                                 for r in d["runs"]] and d["summary"]["model_flops"].update(
        mean=2 * d["summary"]["model_flops"]["mean"]))
    data = json.loads((record / "results.json").read_text())
    tracks = json.loads(runs["tracks"].read_text())
    track = next(t for t in tracks["tracks"] if t["id"] == "below")
    (record / "statistics.md").write_text(statistics_markdown(track, data))
    problems = failures(runs, record)
    assert sum(p.startswith(str(record / "results.json")) and f"{per_token:,} counted by this checkout's harness"
               in p for p in problems) == 3, problems


def test_a_record_of_a_commit_not_merged_into_head_runs_none_of_its_code(runs, tmp_path):
    """validate runs a commit's code (its FLOPs count) only once the commit is merged into HEAD: a record made on a
    side branch whose train_gpt.py would leave a file when imported fails, saying so, and none of its code runs."""
    repo = runs["repo"]
    head = git(repo, "rev-parse", "HEAD")
    imported = tmp_path / "imported"
    git(repo, "checkout", "-q", runs["a"])
    source = (repo / "train_gpt.py").read_text() + f"\nopen({str(imported)!r}, 'w').close()\n"
    (repo / "train_gpt.py").write_text(source)
    side = commit_all(repo, "a side branch")
    git(repo, "checkout", "-q", head)
    dirs = copy_runs(runs, tmp_path)
    for d in dirs:
        relabel(d, side)
        replace_source(d / "log.txt", source)
    record = make(runs, tmp_path, dirs=dirs)
    problems = failures(runs, record)
    assert problems and any(p.startswith(str(record / "results.json")) and f"commit {side[:12]} is not merged into this "
                            "checkout's HEAD" in p for p in problems), problems
    assert not imported.exists()


def test_identical_metrics_in_every_run_fail_the_target_test(runs, tmp_path):
    record = make(runs, tmp_path)
    loss = json.loads((record / "results.json").read_text())["runs"][0]["val_loss"]
    for name in ("seed1", "seed2"):
        edit_log(record / "logs" / f"{name}.txt", lambda l: re.sub(r"val_loss:\S+", f"val_loss:{loss:.6f}", l)
                 if l.startswith("done: ") or (l.startswith("step:") and " val_loss:" in l) else l)
    edit_json(record, lambda d: [r.update(val_loss=loss) for r in d["runs"]])
    problems = failures(runs, record)
    assert any("zero variance" in p for p in problems)


def test_a_resumed_run_validates(runs, tmp_path):
    opts = dict(runs["opts"], out_dir=str(tmp_path / "resumed"), save_every=2, save_final="true")
    run(opts, run_id="seed5", seed=2, stop_after=2)
    run(opts, run_id="seed5", seed=2, resume=str(tmp_path / "resumed" / "seed5" / "checkpoint.pt"))
    d = tmp_path / "resumed" / "seed5"
    relabel(d, runs["a"])
    assert "resumed from" in (d / "log.txt").read_text()
    record = make(runs, tmp_path, dirs=[runs["dirs"][0], runs["dirs"][1], d])
    assert failures(runs, record) == []


def test_a_resume_in_another_environment_fails(runs, sparse_log, tmp_path):
    """Every start is checked, not only the first: a resume on other hardware (or another CPU model or thread count:
    a CPU run's sums depend on them) is not the same run."""
    record = make(runs, tmp_path, dirs=sparse_log)
    starts = iter(range(2))
    edit_log(record / "logs" / "seed7.txt", lambda l: l.replace('"threads": ', '"threads": 10') if l.startswith(
        "environment: ") and next(starts) == 1 else l)
    (problem,) = failures(runs, record)
    assert "the run was resumed with another threads (environment)" in problem


def test_a_run_whose_val_text_is_in_its_train_shards_fails(runs, tmp_path):
    record = make(runs, tmp_path)
    measured = runs["data"]["val_overlap"]
    edit_log(record / "logs" / "seed0.txt", lambda l: l.replace(json.dumps(measured),
                                                                json.dumps({**measured, "fraction": 0.4})))
    (problem,) = failures(runs, record)
    assert "40.00% of the val tokens lie in 32-token n-grams that the train shards also hold" in problem


def test_a_run_at_a_commit_that_measures_the_overlap_must_log_it(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed1.txt", lambda l: l.replace(json.dumps(runs["data"]["val_overlap"]), "null"))
    (problem,) = failures(runs, record)
    assert problem.startswith(str(record / "logs" / "seed1.txt")) and "no val/train overlap in the data line" in problem


@pytest.fixture(scope="module")
def sparse_log(runs, tmp_path_factory):
    """Three runs of one recipe that reads its loss every 3 steps and validates every 4 (a record's runs share their
    settings): seeds 8 and 9 straight through, and seed 7 (last) saved every 5 steps, killed after 7 and resumed
    from step 5: step lines at 3, 4, 5, 6, 7, then 6, 8, 9, 10."""
    out = tmp_path_factory.mktemp("sparse")
    opts = dict(runs["opts"], out_dir=str(out), steps=10, log_every=3, val_every=4)
    for seed in (8, 9):
        run(opts, run_id=f"seed{seed}", seed=seed)
    with as_a_crash():  # killed after step 7: the log goes on past the checkpoint of step 5
        run(opts, run_id="seed7", seed=7, stop_after=7, save_every=5, save_final="true")
    run(opts, run_id="seed7", seed=7, save_every=5, save_final="true", resume=str(out / "seed7" / "checkpoint.pt"))
    dirs = [out / "seed8", out / "seed9", out / "seed7"]
    for d in dirs:
        relabel(d, runs["a"])
    steps = [int(re.match(r"step:(\d+)/", l).group(1)) for l in (dirs[-1] / "log.txt").read_text().splitlines()
             if l.startswith("step:") and " train_loss:" in l]
    assert steps == [3, 4, 5, 6, 7, 6, 8, 9, 10]
    return dirs


def test_a_run_logged_every_few_steps_validates_its_times_summed_over_the_windows(runs, sparse_log, tmp_path):
    record = make(runs, tmp_path, dirs=sparse_log)
    assert failures(runs, record) == []


def test_an_edited_step_time_in_a_run_logged_every_few_steps_fails(runs, sparse_log, tmp_path):
    record = make(runs, tmp_path, dirs=sparse_log)

    def faster(line):  # step 3's window (3 steps) said to be twice as fast, its tok/s to match
        if not line.startswith("step:3/") or " train_loss:" not in line:
            return line
        step_ms = float(re.search(r"step_ms:(\S+)", line).group(1)) / 2
        line = re.sub(r"step_ms:\S+", f"step_ms:{step_ms:.2f}", line)
        return re.sub(r"tok/s:\S+", f"tok/s:{256 * 1000 / step_ms:.0f}", line)

    edit_log(record / "logs" / "seed7.txt", faster)
    (problem,) = failures(runs, record)
    assert "the step times sum to" in problem and "at step 3, but the line says train_time_ms:" in problem


def test_a_step_line_missing_from_a_run_logged_every_few_steps_fails(runs, sparse_log, tmp_path):
    record = make(runs, tmp_path, dirs=sparse_log)
    edit_log(record / "logs" / "seed7.txt", lambda l: None if l.startswith("step:8/") else l)  # and its validation
    (problem,) = failures(runs, record)
    assert "step 9 follows step 6; train_gpt.py writes step 8 next (log_every 3)" in problem


def test_one_malformed_record_does_not_stop_the_others(runs, tmp_path, monkeypatch, capsys):
    records = tmp_path / "records"
    for slug in ("good", "broken"):
        new_record("below", slug, [str(d) for d in runs["dirs"]], out=str(records / "below" / f"2026-01-01_{slug}"),
                   tracks_file=str(runs["tracks"]), date="2026-01-01")
    broken = records / "below" / "2026-01-01_broken"
    edit_json(broken, lambda d: d["runs"][1].pop("steps"))
    check = lambda path, tracks: validate(path, tracks, repo=str(runs["repo"]))
    monkeypatch.setattr("records.__main__.validate", check)
    monkeypatch.setattr("records.__main__.RECORDS_DIR", str(records))
    assert records_main(["--tracks", str(runs["tracks"]), "validate", "--all"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {broken / 'results.json'}: run 2: 'steps' is missing" in out
    assert f"{records / 'below' / '2026-01-01_good'}: valid" in out and "Traceback" not in out
    monkeypatch.setattr("records.leaderboard.validate", check)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    left_out = []
    write_leaderboard(str(records), str(readme), str(runs["tracks"]), report=left_out.append)
    assert "| good |" in readme.read_text() and "| broken |" not in readme.read_text()
    assert len(left_out) == 1 and "'steps' is missing" in left_out[0]


def test_reproduce_replays_a_record_to_the_same_digits(runs, tmp_path):
    from records.reproduce import reproduce
    record, said = make(runs, tmp_path), []
    assert reproduce(str(record), ["seed0"], steps=2, repo=str(runs["repo"]), echo=said.append,
                     tracks_file=str(runs["tracks"])) == []
    assert said == ["seed0: 2 losses up to step 2 replayed, the same digits"]


def test_a_hand_made_log_that_validates_is_caught_by_reproduce(runs, tmp_path):
    """validate checks that a log is consistent; a consistent log can be written by hand: one train loss changed
    (and nothing else) still validates, and only the replay shows that the code does not give it."""
    from records.reproduce import reproduce
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed1.txt",
             lambda l: re.sub(r"train_loss:\S+", "train_loss:5.000000", l) if l.startswith("step:2/") else l)
    assert failures(runs, record) == []
    (problem,) = reproduce(str(record), ["seed1"], steps=3, repo=str(runs["repo"]), echo=lambda line: None,
                           tracks_file=str(runs["tracks"]))
    assert re.search(r"seed1: step 2: train_loss 5\.000000 in the log, \S+ replayed$", problem)


def test_a_replay_asks_for_the_same_digits_only_on_the_same_cpu_model_and_kernels_and_its_own_hardware_decides():
    import torch
    from harness.runlog import cpu_name
    from records.reproduce import GPU_TOLERANCE, OTHER_CPU_TOLERANCE, default_tolerance
    here = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    assert default_tolerance(here) == 0.0
    assert default_tolerance({"cpu": here["cpu"]}) == 0.0  # a log from before the capability was logged
    assert default_tolerance({**here, "cpu_capability": "a kernel level not this one"}) == OTHER_CPU_TOLERANCE
    assert default_tolerance({**here, "cpu": "another CPU"}) == OTHER_CPU_TOLERANCE
    # the tolerance is the replaying machine's: a log that names a GPU, replayed on this CPU, gets the CPU's
    assert default_tolerance({**here, "gpu": "NVIDIA H100 80GB HBM3"}) == (
        GPU_TOLERANCE if torch.cuda.is_available() else OTHER_CPU_TOLERANCE)
