"""python -m records ab: both arms on this machine, interleaved, the same seeds, in clean worktrees; the paired
metric and the time ratio with its interval; it stops once settled, and a second call keeps the finished runs."""

import json
import subprocess
from pathlib import Path

from records.ab import ab, order, summary
from tests.test_records import checkout, commit_all, runs  # noqa: F401  (fixture)
from tests.test_train import REPO, options, shards  # noqa: F401  (fixtures)


def two_commits(tmp_path):
    """A repository whose first commit is this train_gpt.py and whose second lowers the matrix lr a hundredfold."""
    source = (REPO / "train_gpt.py").read_text()
    repo = checkout(tmp_path / "repo", source)
    base = commit_all(repo, "base")
    assert source.count("    matrix_lr: float = 0.02") == 1
    (repo / "train_gpt.py").write_text(source.replace("    matrix_lr: float = 0.02", "    matrix_lr: float = 0.0002"))
    return repo, base, commit_all(repo, "a smaller lr")


def test_the_order_alternates_so_that_drift_falls_on_both_arms():
    assert [order(p) for p in range(4)] == [("base", "idea"), ("idea", "base")] * 2


def test_an_ab_of_the_baseline_against_itself_finds_no_difference_and_a_smaller_lr_is_found(options, tmp_path):
    repo, base, idea = two_commits(tmp_path)
    args = [f"--{k}={v}" for k, v in options.items() if k not in ("run_id", "out_dir")] + ["--matrix_lr=0.02"]
    said = []
    same = ab(base, base, args, str(tmp_path / "same"), str(repo), max_pairs=3, echo=said.append)
    assert same["pairs"] == 3 and same["verdict"] == "no difference: every pair the same"
    assert same["time_low"] <= 1.0 <= same["time_high"]  # the time ratio's interval holds 1
    assert [line.split()[1:3] for line in said[:6]] == [["base", "seed"], ["idea", "seed"]] * 1 + \
        [["idea", "seed"], ["base", "seed"]] + [["base", "seed"], ["idea", "seed"]]
    args = [a for a in args if not a.startswith(("--matrix_lr", "--steps"))] + ["--steps=10"]  # each arm's own lr
    smaller = ab(base, idea, args, str(tmp_path / "lr"), str(repo), max_pairs=2, min_pairs=2, alpha=0.05,
                 echo=said.append)
    runs = tmp_path / "lr" / "runs"
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/results.json")}
    assert len(stamps) == 4  # as if killed after 2 pairs; run again, it goes on from there
    smaller = ab(base, idea, args, str(tmp_path / "lr"), str(repo), max_pairs=4, min_pairs=3, alpha=0.05,
                 echo=said.append)
    assert {name: (runs / name / "results.json").stat().st_mtime_ns for name in stamps} == stamps  # kept, not rerun
    assert smaller["verdict"] == "IDEA is worse" and smaller["p"] < 0.05 and smaller["pairs"] >= 3
    saved = json.loads((tmp_path / "lr" / "ab.json").read_text())
    assert saved["summary"]["verdict"] == "IDEA is worse" and len(saved["runs"]) == smaller["pairs"]
    assert "IDEA - BASE" in (tmp_path / "lr" / "report.md").read_text()
    for tree in [*(tmp_path / "same" / "trees").iterdir(), *(tmp_path / "lr" / "trees").iterdir()]:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True)


def test_the_summary_of_pairs_by_hand():
    pairs = [{"base": {"val_loss": 5.0, "training_time_s": 10.0}, "idea": {"val_loss": 4.9, "training_time_s": 9.0}},
             {"base": {"val_loss": 5.1, "training_time_s": 10.0}, "idea": {"val_loss": 4.98, "training_time_s": 9.1}},
             {"base": {"val_loss": 5.2, "training_time_s": 10.0}, "idea": {"val_loss": 5.11, "training_time_s": 8.9}}]
    s = summary(pairs, "val_loss", 0.01)
    assert s["verdict"] == "IDEA is better" and round(s["diff"], 6) == -0.103333
    assert 0.89 < s["time_ratio"] < 0.91 and s["time_high"] < 1 and s["settled"]


def test_a_record_carries_its_ab_against_the_record_it_beats_and_validate_checks_it(runs, tmp_path):  # noqa: F811
    """The A/B's logs go into the record (ab/), validate checks each like a run (its arm's commit and source, seeds
    0..N-1, one machine) and recomputes the time ratio the leaderboard shows beside the time; an A/B whose BASE is
    not the beaten record's commit, with a log dropped, or with a log from another machine is refused."""
    from records.leaderboard import entry
    from records.record import new_record, validate
    from tests.test_records import edit_json, edit_log
    records = tmp_path / "records"
    old = new_record("budget", "old", [str(d) for d in runs["dirs"]], out=str(records / "budget" / "2026-01-01_old"),
                     tracks_file=str(runs["tracks"]), date="2026-01-01", author="A", repo=str(runs["repo"]))
    args = [f"--{k}={v}" for k, v in runs["opts"].items() if k not in ("out_dir",)]
    ab(runs["a"], runs["b"], args, str(tmp_path / "ab"), str(runs["repo"]), max_pairs=2, min_pairs=2,
       echo=lambda line: None)
    ideas = [str(tmp_path / "ab" / "runs" / f"idea_s{seed}") for seed in (0, 1)]
    new = Path(new_record("budget", "new", ideas, out=str(records / "budget" / "2026-01-02_new"),
                          tracks_file=str(runs["tracks"]), date="2026-01-02", author="B", repo=str(runs["repo"]),
                          ab_dir=str(tmp_path / "ab"), beats="budget/2026-01-01_old"))
    check = lambda: validate(str(new), str(runs["tracks"]), repo=str(runs["repo"]))
    problems, notes = check()
    assert problems == [] and old, problems
    (ab_note,) = [n for n in notes if n.startswith("ab: ")]
    assert "vs budget/2026-01-01_old, 2 pairs on one machine" in ab_note
    track = next(t for t in json.loads(runs["tracks"].read_text())["tracks"] if t["id"] == "budget")
    shown = entry(str(new), json.loads((new / "results.json").read_text()), track, str(tmp_path),
                  ("consistent, not replayed", "kept", ab_note[4:]))
    assert f"({ab_note[4:]})" in shown["cells"][5]
    edit_json(new, lambda d: d["ab"].update(base=runs["b"]))
    assert any("is not the commit of budget/2026-01-01_old" in p for p in check()[0])
    edit_json(new, lambda d: d["ab"].update(base=runs["a"]))
    edit_log(new / "ab" / "idea_s1.txt", lambda l: l.replace('"threads": ', '"threads": 10', 1)
             if l.startswith("environment: ") else l)  # 2 threads -> 102: not the machine of the other logs
    assert any("ran on another machine" in p for p in check()[0])
    (new / "ab" / "idea_s1.txt").unlink()
    assert any("an A/B is seeds 0..N-1" in p for p in check()[0])
    for tree in (tmp_path / "ab" / "trees").iterdir():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=runs["repo"], capture_output=True)
