"""Records that a consistent text cannot prove (issue 27), each class tried as a cheater would: files beside the logs,
dates before the commit, dropped seeds, rules changed with a record, code hidden in a diff, a peak that lifts MFU,
copies moved, scaled or noised, and replays: forged attestations, shifted losses, scaled bits per byte, settings the
record smuggles in. The instruments are this checkout's (FLOPs: tests/test_records.py)."""

import glob
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from records import attest, trust
from records.record import check_mfu, train_curve
from records.reproduce import replay_config, reproduce
from tests.test_records import commit_all, edit_json, edit_log, failures, git, make, runs  # noqa: F401  (fixtures)
from tests.test_records_trust import board_record
from tests.test_train import shards  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted(glob.glob(str(REPO / "records" / "cpu-smoke" / "*" / "logs" / "seed*.txt")))


# -----------------------------------------------------------------------------
# What a record folder may hold, and when it may be dated


@pytest.mark.parametrize("name", ["conftest.py", "sitecustomize.py", "logs/seed0.pkl", "weights.pt", "logs/extra/a.txt",
                                  "replays/x/y/z.txt"])
def test_a_file_a_record_does_not_hold_is_refused(runs, tmp_path, name):
    record = make(runs, tmp_path)
    (record / name).parent.mkdir(parents=True, exist_ok=True)
    (record / name).write_bytes(b"\x80\x04K\x01.")  # a pickle, say: never read, refused for being there
    problems = failures(runs, record)
    assert problems and all("is not a file a record holds" in p for p in problems), problems


def test_a_log_of_no_run_is_refused(runs, tmp_path):
    record = make(runs, tmp_path)
    shutil.copyfile(record / "logs" / "seed0.txt", record / "logs" / "seed7.txt")
    (problem,) = failures(runs, record)
    assert problem == f"{record / 'logs' / 'seed7.txt'}: belongs to no run of results.json: remove it"


def test_a_record_dated_before_its_commit_is_refused(runs, tmp_path):
    record = make(runs, tmp_path, date="2025-05-31")  # the fixture's commits are of 2025-06-01
    (problem,) = failures(runs, record)
    assert "dated 2025-05-31, before its commit" in problem and "(2025-06-01)" in problem


# -----------------------------------------------------------------------------
# No selection: seeds 0..N-1, or a reason and a lower rank


def test_a_record_that_dropped_a_seed_needs_a_reason_and_ranks_below(runs, tmp_path):
    kept = [runs["dirs"][0], runs["dirs"][2]]  # seed 1 dropped
    record = make(runs, tmp_path, track="budget", dirs=kept, seeds_note=None)
    (problem,) = failures(runs, record)
    assert "seeds 0, 2 are not 0..1" in problem and "'seeds_note' is missing" in problem
    edit_json(record, lambda d: d.update(seeds_note="seed 1 crashed at step 3 (a node failure)"))
    assert failures(runs, record) == []
    from records.leaderboard import entry
    track = next(t for t in json.loads(runs["tracks"].read_text())["tracks"] if t["id"] == "budget")
    chosen = entry(str(record), json.loads((record / "results.json").read_text()), track, str(tmp_path))
    full = make(runs, tmp_path / "full", track="budget")
    every = entry(str(full), json.loads((full / "results.json").read_text()), track, str(tmp_path))
    assert every["rank"] < chosen["rank"] and "(seeds chosen: seed 1 crashed" in chosen["cells"][1]


# -----------------------------------------------------------------------------
# A track's rules are set before a record, not with it


def clone_with_tracks(runs, tmp_path, monkeypatch):
    """A clone of the fixture's repository with the test tracks committed as its records/tracks.json, which
    validate then takes for this repository's own rules: (the clone, its tracks file)."""
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(runs["repo"]), str(repo)], check=True)
    tracks = repo / "records" / "tracks.json"
    tracks.parent.mkdir()
    tracks.write_text(runs["tracks"].read_text())
    commit_all(repo, "the tracks")
    monkeypatch.setattr("records.record.TRACKS_FILE", str(tracks))
    return repo, tracks


def test_a_tracks_file_changed_in_the_commit_that_adds_a_record_is_refused(runs, tmp_path, monkeypatch):
    repo, tracks = clone_with_tracks(runs, tmp_path, monkeypatch)
    record = Path(board_record(runs, repo / "records", "below", "2026-01-01_fine", author="A"))
    check = lambda: subprocess_free_validate(record, tracks, repo)
    assert check() == []  # uncommitted, the rules untouched
    loose = json.loads(tracks.read_text())
    loose["tracks"][0]["target"] = 1000.0
    tracks.write_text(json.dumps(loose))
    (problem,) = check()
    assert problem.startswith(str(tracks)) and "is modified in this checkout beside the uncommitted record" in problem
    commit_all(repo, "a record, and the track's target loosened with it")
    (problem,) = check()
    assert "which adds the record" in problem and "a track's rules change in a change of their own" in problem


def test_a_tracks_file_changed_on_the_branch_that_brings_a_record_is_refused(runs, tmp_path, monkeypatch):
    """A pull request of two commits, the rules loosened in the first and the record added in the second, merged:
    the merge is the change, and it changes tracks.json. A record merged alone passes."""
    repo, tracks = clone_with_tracks(runs, tmp_path, monkeypatch)
    main = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    for loosen, name in ((False, "2026-01-01_honest"), (True, "2026-01-02_loose")):
        git(repo, "checkout", "-q", "-b", name)
        if loosen:
            loose = json.loads(tracks.read_text())
            loose["tracks"][0]["target"] = 1000.0
            tracks.write_text(json.dumps(loose))
            commit_all(repo, "loosen the target")
        board_record(runs, repo / "records", "below", name, author="A")
        commit_all(repo, "the record")
        git(repo, "checkout", "-q", main)
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q", "--no-ff", "-m", f"merge {name}", name)
        if not loosen:
            assert subprocess_free_validate(repo / "records" / "below" / name, tracks, repo) == []
    (problem,) = subprocess_free_validate(repo / "records" / "below" / "2026-01-02_loose", tracks, repo)
    assert "the merge that brought in commit" in problem and "a track's rules change in a change of their own" in problem


def subprocess_free_validate(record, tracks, repo):
    from records.record import validate
    return validate(str(record), str(tracks), repo=str(repo))[0]


# -----------------------------------------------------------------------------
# Diffs are applied with git, not parsed


def test_code_hidden_in_a_diff_is_found_by_applying_it(runs, tmp_path):
    """A hunk of train_gpt.py with no `diff --git` header, or under a README.md header: git applies what it applies,
    and what it changed is read from the result."""
    import hashlib
    from tests.test_records import copy_runs, relabel
    headerless = (b"--- a/train_gpt.py\n+++ b/train_gpt.py\n@@ -1 +1,2 @@\n"
                  + (runs["repo"] / "train_gpt.py").read_bytes().splitlines(keepends=True)[0] + b"+import os\n")
    crafted = b"diff --git a/README.md b/README.md\n" + headerless
    for name, diff in (("headerless", headerless), ("crafted", crafted)):
        dirs = copy_runs(runs, tmp_path / name)
        for d in dirs:
            relabel(d, runs["a"], dirty=True, diff_sha256=hashlib.sha256(diff).hexdigest())
            (d / "git.diff").write_bytes(diff)
        record = build_dirty(runs, tmp_path / name, dirs, diff)
        problems = failures(runs, record)
        assert len(problems) == 3 and all(p.startswith(str(record / "logs")) for p in problems), problems
        assert all("more than prose" in p and "train_gpt.py" in p or "does not apply" in p for p in problems), problems


def build_dirty(runs, out, dirs, diff):
    """A record of runs from a modified tree, built by hand (records new refuses a diff that does not apply)."""
    clean = make(runs, out / "clean")
    record = out / "record"
    shutil.copytree(clean, record)
    for d in dirs:
        shutil.copyfile(d / "log.txt", record / "logs" / f"{d.name}.txt")
        (record / "logs" / f"{d.name}.diff").write_bytes(diff)
    return record


# -----------------------------------------------------------------------------
# MFU's peak is the track's


def test_a_configs_peak_flops_does_not_lift_the_mfu_bound():
    track = {"id": "t", "hardware": {"gpu": "H100", "count": 8, "peak_flops": 989.5e12}}
    run = {"run_id": "seed0", "training_time_s": 1.0, "world_size": 8, "mfu": 0.5}
    found = []
    # 8 x 989.5e12 FLOP/s for 1 s: 1e16 FLOPs is an MFU of 1.26, whatever --peak_flops the run set for itself
    check_mfu(run, {"peak_flops": 1e18}, {"gpu": "NVIDIA H100 80GB HBM3"}, 1e16, track, "results.json",
              lambda f, r: found.append(r))
    assert len(found) == 1 and "above 1" in found[0] and "the track's peak" in found[0]
    found.clear()
    check_mfu(dict(run, mfu=1e15 / (8 * 989.5e12)), {}, {"gpu": "NVIDIA H100"}, 1e15, track, "results.json",
              lambda f, r: found.append(r))
    assert found == []


# -----------------------------------------------------------------------------
# A run is identified by what it did: copies moved, scaled or noised are one run, two seeds are two


def committed_curves():
    return [train_curve(path) for path in COMMITTED]


@pytest.mark.skipif(not COMMITTED, reason="no committed cpu-smoke record")
@pytest.mark.parametrize("change", [
    lambda x, i: x + 2e-4, lambda x, i: x - 0.3, lambda x, i: x * 1.01, lambda x, i: round(x + 0.05, 6),
    lambda x, i: x + random.Random(i).gauss(0, 0.003)], ids=["nudged", "shifted", "scaled", "rounded", "noised"])
def test_a_copy_moved_scaled_or_noised_is_one_run_and_two_seeds_are_two(change):
    curves = committed_curves()
    copy = {step: change(loss, step) for step, loss in curves[0].items()}
    assert trust.same_run(curves[0], copy)
    assert trust.copied_curves(dict(enumerate(curves))) == []  # the record's own seeds: far apart


@pytest.mark.skipif(not COMMITTED, reason="no committed cpu-smoke record")
def test_a_committed_run_copied_into_another_record_with_a_byte_changed_is_refused(tmp_path):
    """Across records: a copy of a committed log with one space changed and every loss nudged counts in the first
    record only, however its bytes differ."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        (folder / "logs").mkdir(parents=True)
    shutil.copyfile(COMMITTED[0], first / "logs" / "seed0.txt")
    text = Path(COMMITTED[0]).read_text()
    import re
    nudge = lambda line: re.sub(r"train_loss:(\S+)", lambda m: f"train_loss:{float(m.group(1)) + 2e-4:.6f}", line)
    nudged = "\n".join(nudge(l) if l.startswith("step:") else l for l in text.split("\n"))
    (second / "logs" / "seed0.txt").write_text(nudged.replace("config: {", "config:  {", 1))
    run = [{"run_id": "seed0", "log": "logs/seed0.txt"}]
    records = {str(first): {"track": "cpu-smoke", "date": "2026-01-01", "runs": run, "author": "A", "commit": "c"},
               str(second): {"track": "cpu-smoke", "date": "2025-01-01", "runs": run, "author": "B", "commit": "c"}}
    curves = {(path, "seed0"): train_curve(os.path.join(path, "logs", "seed0.txt")) for path in records}
    flagged = trust.duplicate_runs(records, curves)
    # neither is in git: the earlier date keeps the run (in git, the earlier commit would, whatever the dates)
    assert list(flagged) == [str(first)] and "a run counts in one record only" in flagged[str(first)][0]


# -----------------------------------------------------------------------------
# The replay is the judge


def test_the_replay_compares_every_figure_and_a_shift_within_the_tolerance_is_caught():
    logged = {("train_loss", s): 5.0 - 0.01 * s for s in range(1, 51)}
    logged.update({("val_loss", 50): 4.5, ("val_bpb", 50): 2.0})
    same = dict(logged)
    assert attest.compare_figures(logged, same, 0.0) == (0.0, None)
    lowered = {k: v - 0.04 if k[0] == "train_loss" else v for k, v in logged.items()}  # each within 0.05
    _, problem = attest.compare_figures(lowered, same, attest.OTHER_CPU_TOLERANCE)
    assert "off the replay's on average" in problem
    scaled = {k: v * 0.8 if k[0] == "val_bpb" else v for k, v in logged.items()}  # the losses untouched
    _, problem = attest.compare_figures(scaled, same, attest.OTHER_CPU_TOLERANCE)
    assert problem == "step 50: val_bpb 1.600000 in the log, 2.000000 replayed"
    val = {k: v - 0.03 if k[0] != "train_loss" else v for k, v in logged.items()}  # the ranked figures, within 0.05
    _, problem = attest.compare_figures(val, same, attest.OTHER_CPU_TOLERANCE)
    assert problem == "step 50: val_bpb 1.970000 in the log, 2.000000 replayed"
    cut = {k: v for k, v in logged.items() if k[1] <= 40}  # a run cut short and called a shorter run
    _, problem = attest.compare_figures(cut, same, 0.0)
    assert "missing from the log" in problem


def test_a_tolerance_is_the_replaying_machines_not_the_records():
    here = {"device": "cpu", "world_size": 1, "cpu": "Xeon", "cpu_capability": "AVX512", "threads": 2}
    assert attest.allowed_tolerance(here, dict(here)) == 0.0
    assert attest.allowed_tolerance({**here, "cpu": "another CPU"}, here) == attest.OTHER_CPU_TOLERANCE
    assert attest.allowed_tolerance(here, {**here, "gpu": "NVIDIA H100"}) == attest.GPU_TOLERANCE


def test_the_replay_passes_config_fields_only_never_a_path_or_an_unknown_key():
    fields = {"depth", "seed", "train_files", "val_files", "tokenizer", "resume", "out_dir"}
    config = {"depth": 2, "seed": 0, "train_files": "/record/own/shards/*.bin", "resume": "x", "out_dir": "o"}
    assert replay_config(config, fields) == {"depth": 2, "seed": 0}
    with pytest.raises(trust.RecordError, match="has no field for"):
        replay_config({**config, "evil": "--resume=/tmp/x"}, fields)
    with pytest.raises(trust.RecordError, match="is not a plain value"):
        replay_config({**config, "depth": {"a": 1}}, fields)


def test_an_attestation_is_checked_like_a_run_and_a_forged_one_is_refused(runs, tmp_path):
    record = make(runs, tmp_path)
    said = []
    assert reproduce(str(record), ["seed0"], steps=2, repo=str(runs["repo"]), echo=said.append,
                     tracks_file=str(runs["tracks"]), attest_by="A Reviewer") == []
    assert said[-1].startswith("wrote ") and said[-1].endswith(".json")
    from records.record import validate
    problems, notes = validate(str(record), str(runs["tracks"]), repo=str(runs["repo"]))
    assert problems == [] and "replay: spot-checked: 2 steps, replayed on the same hardware" in notes
    (attestation,) = glob.glob(str(record / "replays" / "*.json"))
    replay_log = Path(glob.glob(str(record / "replays" / "*" / "seed0.txt"))[0])
    original = replay_log.read_text()
    edit_log(replay_log, lambda l: l.replace("train_loss:", "train_loss:9") if l.startswith("step:1/") else l)
    (problem,) = failures(runs, record)
    assert problem.startswith(attestation) and "run seed0: step 1: train_loss" in problem
    replay_log.write_text(original)
    data = json.loads(Path(attestation).read_text())
    data["runs"][0]["largest_difference"] = 0.5
    Path(attestation).write_text(json.dumps(data))
    (problem,) = failures(runs, record)
    assert "states a largest difference of 0.5, 0 found" in problem
    data["runs"][0].update(largest_difference=0.0, run_id="seed9")
    Path(attestation).write_text(json.dumps(data))
    (problem,) = failures(runs, record)
    assert "replays a run the record does not hold" in problem


def test_a_record_ranked_by_core_is_evaluated_again_and_an_edited_core_is_caught(runs, tmp_path):
    """On a track ranked by CORE, a whole replay trains the run again, runs the commit's eval_core.py on it (here the
    fixture bundle, as the record's was) and compares CORE: the same digits on this CPU."""
    import eval_core
    from tests.core_fixture import write_bundle
    from tests.test_records import relabel
    from tests.test_train import run
    bundle = write_bundle(tmp_path / "bundle")
    out = tmp_path / "runs"
    dirs = []
    for seed in range(2):
        run(dict(runs["opts"], out_dir=str(out), save_final="true"), run_id=f"seed{seed}", seed=seed)
        eval_core.main(["--run-dir", str(out / f"seed{seed}"), "--bundle", bundle, "--bpb-tokens", "0"])
        relabel(out / f"seed{seed}", runs["a"])
        dirs.append(out / f"seed{seed}")
    record = make(runs, tmp_path, track="core", dirs=dirs)
    said = []
    replay = lambda: reproduce(str(record), ["seed0"], repo=str(runs["repo"]), echo=said.append,
                               tracks_file=str(runs["tracks"]), core_args=["--bundle", bundle, "--bpb-tokens", "0"])
    assert replay() == [] and said[-1].startswith("seed0: ")
    logged = next(l for l in (record / "logs" / "seed0.txt").read_text().splitlines() if l.startswith("core:"))
    better = f"core:{float(logged.split()[0][5:]) + 0.05:.6f}"
    edit_log(record / "logs" / "seed0.txt", lambda l: " ".join([better] + l.split()[1:]) if l.startswith("core:") else l)
    (problem,) = replay()
    assert "seed0: CORE" in problem and "in the log" in problem and "replayed" in problem
