"""Records a cheater made from copies of real ones: each is refused by a mechanism (not by a string compared), with
one printable line `path: reason`; and what the leaderboard does with what validate lets through."""

import datetime
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from records import leaderboard, trust
from records import record as record_module
from records.__main__ import main as records_main
from records.leaderboard import write_leaderboard
from records.record import load_tracks, new_record, parse_log, track_pins, validate
from tests.test_records import (commit_all, edit_json, edit_log, failures, git, make, runs,  # noqa: F401  (fixtures)
                                tracks_for)
from tests.test_train import shards  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
TODAY = datetime.date.today()


def checked_with(monkeypatch, runs, *modules):
    """validate against the fixture's git repository wherever the command line and the leaderboard call it."""
    check = lambda path, tracks: validate(path, tracks, repo=str(runs["repo"]))
    for module in modules or ("records.__main__", "records.leaderboard"):
        monkeypatch.setattr(f"{module}.validate", check)


def board_record(runs, records, track, name, **kwargs):
    """A record built in records/<track>/<date>_<slug>/ (where validate --all and the leaderboard look)."""
    date, slug = name.split("_", 1)
    return Path(new_record(track, slug, [str(d) for d in runs["dirs"]], out=str(records / track / name),
                           tracks_file=str(runs["tracks"]), date=date, **kwargs))


# -----------------------------------------------------------------------------
# 1. Every read bounded; no symlinks; every name printed as one line


def test_a_log_symlinked_to_another_log_is_refused(runs, tmp_path):
    record = make(runs, tmp_path)
    log = record / "logs" / "seed1.txt"
    log.unlink()
    log.symlink_to(record / "logs" / "seed0.txt")
    assert failures(runs, record) == [f"{log}: is a symlink; a record holds only plain files"]


def test_a_log_symlinked_to_dev_zero_is_refused_without_reading_it(runs, tmp_path):
    record = make(runs, tmp_path)
    log = record / "logs" / "seed2.txt"
    log.unlink()
    log.symlink_to("/dev/zero")
    started = time.monotonic()
    assert failures(runs, record) == [f"{log}: is a symlink; a record holds only plain files"]
    with pytest.raises(trust.RecordError, match="is a symlink"):
        parse_log(str(log))  # the reader itself refuses it too (compare reads logs with it)
    assert time.monotonic() - started < 10


def test_a_record_folder_that_is_a_symlink_is_refused(runs, tmp_path):
    record = make(runs, tmp_path)
    link = tmp_path / "linked"
    link.symlink_to(record)
    assert failures(runs, link) == [f"{link}: is a symlink; a record is a plain folder"]


def test_a_pipe_among_the_logs_is_refused_without_blocking(runs, tmp_path):
    record = make(runs, tmp_path)
    log = record / "logs" / "seed0.txt"
    log.unlink()
    os.mkfifo(log)
    assert failures(runs, record) == [f"{log}: is not a plain file"]
    with pytest.raises(trust.RecordError, match="is not a plain file"):
        trust.read_bounded(str(log), 100)


def test_a_log_or_results_json_over_its_cap_is_refused(runs, tmp_path, monkeypatch):
    record = make(runs, tmp_path)
    monkeypatch.setattr(trust, "LOG_BYTES", 1000)
    problems = failures(runs, record)
    assert len(problems) == 3 and all(p.endswith("is larger than 1,000 bytes, the most read of such a file")
                                      for p in problems)
    monkeypatch.undo()
    results = record / "results.json"
    results.write_text(results.read_text() + " " * (1 << 20))
    assert failures(runs, record) == [f"{results}: is larger than 1,048,576 bytes, the most read of such a file"]


def test_a_log_name_with_a_newline_prints_no_second_fail_line(runs, tmp_path, monkeypatch, capsys):
    """The name in results.json, then a file of that name: each time the failure is one line, the newline shown
    as \\x0a, and no line of the output starts as a forged FAIL."""
    record = make(runs, tmp_path)
    forged = "logs/seed0\nFAIL everything else is fine.txt"
    edit_json(record, lambda d: d["runs"][0].update(log=forged))
    checked_with(monkeypatch, runs, "records.__main__")
    for _ in ("named", "present"):
        assert records_main(["--tracks", str(runs["tracks"]), "validate", str(record)]) == 1
        lines = capsys.readouterr().out.splitlines()
        assert not any(line.startswith("FAIL everything") for line in lines)
        assert any("seed0\\x0aFAIL everything else is fine.txt" in line for line in lines), lines
        (record / forged).write_text("a log\n")


def test_printable_escapes_controls_bidi_controls_and_line_breaks():
    assert trust.printable("a\nb\rc\x1b[31md\u202ee\u2066f\u200bg\u2028h") == \
        "a\\x0ab\\x0dc\\x1b[31md\\u202ee\\u2066f\\u200bg\\u2028h"
    assert trust.printable("plain ± ü text") == "plain ± ü text"
    assert trust.one_line("x\ny", "two\nlines") == "x\\x0ay: two lines"


# -----------------------------------------------------------------------------
# 2. Records only in track folders, named <date>_<slug>


def test_a_results_json_outside_a_track_folder_is_refused_by_validate_all_and_the_leaderboard(runs, tmp_path,
                                                                                               monkeypatch, capsys):
    records = tmp_path / "records"
    good = board_record(runs, records, "below", "2026-01-01_good")
    for misplaced in ("notatrack/2026-01-01_good", "below/good", "stray"):
        (records / misplaced).mkdir(parents=True)
        shutil.copyfile(good / "results.json", records / misplaced / "results.json")
    (records / "linked").symlink_to(records / "below")
    checked_with(monkeypatch, runs)
    monkeypatch.setattr("records.__main__.RECORDS_DIR", str(records))
    assert records_main(["--tracks", str(runs["tracks"]), "validate", "--all"]) == 1
    out = capsys.readouterr().out
    assert f"{good}: valid" in out
    for misplaced in ("notatrack/2026-01-01_good", "stray"):
        assert f"FAIL {records / misplaced / 'results.json'}: a results.json outside records/<track>/" in out
    assert f"FAIL {records / 'below/good/results.json'}: the record folder good is not <YYYY-MM-DD>_<slug>" in out
    assert f"FAIL {records / 'linked'}: is a symlink; records/ holds only plain folders" in out
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    left_out = []
    write_leaderboard(str(records), str(readme), str(runs["tracks"]), report=left_out.append)
    assert len(left_out) == 4 and readme.read_text().count("| good |") == 1


# -----------------------------------------------------------------------------
# 3. Dates, slugs, track ids and descriptions


@pytest.mark.parametrize("date", ["2026-02-30", "2023-12-31", str(TODAY + datetime.timedelta(days=2)), "2026-1-01",
                                  "\uff12\uff10\uff12\uff16-01-01", 20260101])
def test_a_date_that_is_no_real_iso_date_from_2024_to_tomorrow_is_refused(runs, tmp_path, date):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d.update(date=date))
    (problem,) = failures(runs, record)
    assert problem.startswith(f"{record / 'results.json'}: ") and ("date" in problem)


def test_tomorrow_is_accepted(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d.update(date=str(TODAY + datetime.timedelta(days=1))))
    assert failures(runs, record) == []


@pytest.mark.parametrize("field, value, reason", [
    ("slug", "Test", "is not 1-64 lowercase letters"), ("slug", "a_b", "is not 1-64 lowercase letters"),
    ("slug", "-x", "is not 1-64 lowercase letters"), ("slug", "x" * 65, "is not 1-64 lowercase letters"),
    ("slug", "t\u0435st", "is not ASCII (look-alike letters are refused)"),
    ("slug", "a\u202eb", "is not ASCII"), ("track", "b\u0435low", "track 'b\\u0435low' is not ASCII")])
def test_a_slug_or_track_that_is_not_plain_ascii_is_refused(runs, tmp_path, field, value, reason):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d.update({field: value}))
    problems = failures(runs, record)
    assert any(reason in p for p in problems) and all("\u202e" not in p and "\n" not in p for p in problems)


@pytest.mark.parametrize("description, reason", [
    ("x" * 1001, "'description' is 1,001 characters; at most 1,000"),
    ("one\rtwo", "'description' holds a control or invisible character (U+000D)"),
    ("one\ntwo", "(U+000A)"), ("a \u202eevil", "'description' holds a bidi control (U+202E)"),
    ("zero\u200bwidth", "(U+200B)"), (5, "'description' is not a string"), (["x"], "'description' is not a string"),
    (None, "'description' is missing")])
def test_a_description_that_is_not_one_line_of_visible_text_is_refused(runs, tmp_path, description, reason):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d.update(description=description) if description is not None else d.pop("description"))
    (problem,) = failures(runs, record)
    assert problem.startswith(f"{record / 'results.json'}: ") and reason in problem


def test_records_new_refuses_a_description_of_two_lines_before_building_anything(runs, tmp_path):
    with pytest.raises(trust.RecordError, match=r"'description' holds a control .*U\+000A"):
        make(runs, tmp_path, description="line one\nFAIL line two")
    assert not (tmp_path / "record").exists()


# -----------------------------------------------------------------------------
# 4. Values in range before any arithmetic


@pytest.mark.parametrize("edit, shown", [
    ('"depth": 1000000000', "depth=1000000000 (not in 1..1024)"),
    ('"model_dim": -64', "model_dim=-64 (not in 0..65536)"),
    ('"seq_len": 0', "seq_len=0 (not in 1..1.04858e+06)"), ('"head_dim": "16"', "head_dim='16'"),
    ('"depth": true', "depth=True"), ('"total_batch_tokens": 1e+300', "total_batch_tokens=1e+300")])
def test_a_config_value_out_of_range_is_refused_before_any_flops_are_counted(runs, tmp_path, monkeypatch, edit, shown):
    counted, count = [], record_module.instruments.count_flops
    monkeypatch.setattr(record_module.instruments, "count_flops",
                        lambda commit, requests, repo: counted.extend(requests) or count(commit, requests, repo))
    record = make(runs, tmp_path)
    key = edit.split(":")[0]
    log = record / "logs" / "seed1.txt"
    edit_log(log, lambda l: re.sub(key + r": [^,]+", edit, l) if l.startswith("config: ") else l)
    (problem,) = failures(runs, record)
    assert problem.startswith(f"{log}: line ") and "out of range in the config or model line" in problem
    assert shown in problem and counted == []  # nothing is counted for a record with a run out of range


def test_zero_flops_per_token_in_the_log_or_zero_time_in_results_is_refused(runs, tmp_path):
    record = make(runs, tmp_path)
    edit_log(record / "logs" / "seed0.txt", lambda l: re.sub(r"; [\d,]+ FLOPs/token;", "; 0 FLOPs/token;", l))
    (problem,) = failures(runs, record)
    assert "flops_per_token=0 (not in 1.." in problem
    record = make(runs, tmp_path / "b")
    edit_json(record, lambda d: d["runs"][2].update(training_time_s=0, model_flops_per_token=-1))
    (problem,) = failures(runs, record)
    assert problem.startswith(f"{record / 'results.json'}: run 3: ")
    assert "training_time_s=0" in problem and "model_flops_per_token=-1" in problem


# -----------------------------------------------------------------------------
# 5. Runs distinct by their loss curves


def clone(runs, tmp_path, change):
    """A record with a fourth run cloned from seed0 as a cheater would: seed 9 in its config and results.json, its
    first step 1 ms slower (every running total, tok/s and the time in results.json to match, so the step times
    differ), then change(line) applied to its lines."""
    record = make(runs, tmp_path)
    log = record / "logs" / "seed9.txt"
    shutil.copyfile(record / "logs" / "seed0.txt", log)
    first = []
    total = json.loads((record / "results.json").read_text())["runs"][0]["training_time_s"] + 0.001

    def slower(line):
        line = line.replace('"seed": 0,', '"seed": 9,') if line.startswith("config: ") else line
        if line.startswith("done: "):  # its total, rounded as train_gpt.py rounds it (the 1 ms may carry over)
            line = re.sub(r"training_time:\S+s", f"training_time:{total:.2f}s", line)
        if line.startswith("step:") and " train_loss:" in line and not first:
            first.append(line)
            step_ms = float(re.search(r"step_ms:(\S+)", line).group(1)) + 1
            line = re.sub(r"step_ms:\S+", f"step_ms:{step_ms:.2f}", line)
            line = re.sub(r"tok/s:\S+", f"tok/s:{256 * 1000 / step_ms:.0f}", line)
        return re.sub(r"train_time_ms:(\d+)", lambda m: f"train_time_ms:{int(m.group(1)) + 1}", line)

    edit_log(log, lambda line: change(slower(line)))
    edit_json(record, lambda d: d["runs"].append(dict(d["runs"][0], run_id="seed9", log="logs/seed9.txt", seed=9,
                                                      training_time_s=d["runs"][0]["training_time_s"] + 0.001)))
    return record


def test_a_clone_with_one_digit_added_to_one_loss_is_one_run(runs, tmp_path):
    added = []

    def one_more_digit(line):
        if line.startswith("step:3/") and " train_loss:" in line:
            added.append(line)
            return re.sub(r"train_loss:(\S+)", r"train_loss:\g<1>7", line)
        return line

    problems = failures(runs, clone(runs, tmp_path, one_more_digit))
    assert added and not any("same step times" in p for p in problems)  # the times differ: the curve catches it
    assert any("runs seed0 and seed9 are one run counted twice: the same train losses at every common step" in p
               for p in problems), problems


def test_a_clone_nudged_by_1e_6_at_every_step_is_one_run(runs, tmp_path):
    nudge = lambda l: re.sub(r"train_loss:(\S+)", lambda m: f"train_loss:{float(m.group(1)) + 1e-6:.6f}", l)
    problems = failures(runs, clone(runs, tmp_path, nudge))
    assert any("runs seed0 and seed9 are one run counted twice" in p and "apart by at most 1e-06" in p
               for p in problems), problems


def test_runs_of_different_seeds_differ_by_far_more_than_the_copy_tolerance(runs):
    curves = []
    for d in runs["dirs"]:
        lines = [l for l in (d / "log.txt").read_text().splitlines() if l.startswith("step:") and " train_loss:" in l]
        curves.append({int(l.split("/")[0][5:]): float(re.search(r"train_loss:(\S+)", l).group(1)) for l in lines})
    gaps = [max(abs(a[s] - b[s]) for s in a) for i, a in enumerate(curves) for b in curves[i + 1:]]
    assert min(gaps) > 100 * trust.COPY_TOLERANCE, gaps  # 1e-4: two orders of magnitude of margin at least
    assert trust.copied_curves(dict(enumerate(curves))) == []


def test_copied_curves_compare_the_common_steps_and_never_match_a_nan():
    a = {1: 5.0, 2: 4.0, 3: 3.0}
    assert trust.copied_curves({"a": a, "b": {2: 4.00005, 3: 3.0, 4: 1.0}}) == [
        ("a", "b", "the same train losses at every common step (apart by at most 5e-05)")]
    assert trust.copied_curves({"a": a, "b": {1: 5.0, 2: 4.0002, 3: 3.0}}) == []
    assert trust.copied_curves({"a": {1: float("nan")}, "b": {1: float("nan")}}) == []
    assert trust.copied_curves({"a": a, "b": {7: 1.0}}) == []  # nothing in common: nothing to compare


# -----------------------------------------------------------------------------
# 6. One log in one record only


def test_a_log_in_two_records_fails_the_later_one(runs, tmp_path, monkeypatch, capsys):
    records = tmp_path / "records"
    first = board_record(runs, records, "below", "2026-01-01_first")
    later = board_record(runs, records, "below", "2026-02-01_later", author="Someone Else")
    checked_with(monkeypatch, runs)
    monkeypatch.setattr("records.__main__.RECORDS_DIR", str(records))
    assert records_main(["--tracks", str(runs["tracks"]), "validate", "--all"]) == 1
    out = capsys.readouterr().out
    assert f"{first}: valid" in out and f"{later}: 3 problem(s)" in out
    sha = trust.hashlib.sha256((first / "logs" / "seed1.txt").read_bytes()).hexdigest()
    assert sha and (f"FAIL {later / 'logs' / 'seed1.txt'}: is the run of {first / 'logs' / 'seed1.txt'}, a record "
                    "added before this one (the same log bytes): a run counts in one record only") in out


def test_a_backdated_copy_is_refused_and_does_not_rank_first_on_a_tie(runs, tmp_path, monkeypatch, capsys):
    """The copy claims an earlier date and ties the original's time: git says which record came first."""
    records = tmp_path / "records"
    original = board_record(runs, records, "below", "2026-03-01_original", author="Original Author")
    git(records, "init", "-q")
    commit_all(records, "the original")
    copy = board_record(runs, records, "below", "2026-02-01_copy", author="Cheater")
    checked_with(monkeypatch, runs)
    readme = tmp_path / "README.md"
    for committed in (False, True):
        if committed:
            commit_all(records, "the backdated copy")
        readme.write_text("# Title\n")
        left_out = []
        write_leaderboard(str(records), str(readme), str(runs["tracks"]), report=left_out.append)
        rows = [l for l in readme.read_text().splitlines() if l.startswith("| 1 |")]
        assert len(rows) == 1 and "| original |" in rows[0] and "copy" not in readme.read_text().split("###")[1]
        assert len(left_out) == 1 and left_out[0].startswith(f"{copy}: ") and "the same log bytes" in left_out[0]
    monkeypatch.setattr("records.__main__.RECORDS_DIR", str(records))
    assert records_main(["--tracks", str(runs["tracks"]), "validate", "--all"]) == 1
    assert f"{original}: valid" in capsys.readouterr().out


def test_one_run_may_be_filed_in_two_tracks_by_the_same_author_only(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name / "logs").mkdir(parents=True)
        (tmp_path / name / "logs" / "seed0.txt").write_text("the same log\n")
    run = [{"log": "logs/seed0.txt"}]
    record = lambda track, author, date: {"track": track, "author": author, "commit": "c" * 40, "date": date,
                                          "runs": run}
    records = {str(tmp_path / "a"): record("below", "Ada", "2026-01-01"),
               str(tmp_path / "b"): record("budget", "Ada", "2026-01-02"),
               str(tmp_path / "c"): record("budget", "Bob", "2026-01-03")}
    assert list(trust.duplicate_runs(records, {})) == [str(tmp_path / "c")]


# -----------------------------------------------------------------------------
# 7. The leaderboard: never crashes, written whole, served on localhost


def junk(records, name, change):
    """A results.json (no logs) in records/budget/<name>/ that a stubbed validate lets through."""
    record = {"track": "budget", "slug": name.split("_", 1)[1], "date": name.split("_")[0], "description": "ok",
              "commit": "c" * 40, "runs": [], "summary": {"training_time_s": {"mean": 1.0, "std": 0.1},
                                                         "val_bpb": {"mean": 2.0, "std": 0.1},
                                                         "model_flops": {"mean": 1e9, "std": 0}}}
    change(record)
    (records / "budget" / name).mkdir(parents=True)
    (records / "budget" / name / "results.json").write_text(json.dumps(record))


def test_the_leaderboard_leaves_out_what_it_cannot_show_and_still_writes_the_page(runs, tmp_path, monkeypatch):
    records = tmp_path / "records"
    junk(records, "2026-01-01_fine", lambda r: None)
    junk(records, "2026-01-02_number", lambda r: r.update(description=5))
    junk(records, "2026-01-03_list", lambda r: r.update(description=["x"]))
    junk(records, "2026-01-04_missing", lambda r: r.pop("description"))
    junk(records, "2026-01-05_zero", lambda r: r["summary"]["model_flops"].update(mean=0))
    junk(records, "2026-01-06_nosummary", lambda r: r.pop("summary"))
    junk(records, "2026-01-07_noruns", lambda r: r.pop("runs"))
    monkeypatch.setattr("records.leaderboard.validate", lambda path, tracks: ([], []))
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    left_out = []
    write_leaderboard(str(records), str(readme), str(runs["tracks"]), report=left_out.append)
    assert len(left_out) == 6 and all("cannot be listed" in line for line in left_out)
    assert "| fine |" in readme.read_text() and "| number |" not in readme.read_text()
    page = (records / "leaderboard.html").read_text()
    assert "<h2>Left out</h2>" in page and page.count("cannot be listed") == 6 and "<svg" in page
    assert "<li>records/budget/2026-01-02_number: cannot be listed (ValueError: a field shown is not a string" in page
    assert str(tmp_path) not in page  # paths from the repository's root: the same page on every machine


def test_a_pipe_or_carriage_return_in_a_description_keeps_the_table_one_row(runs, tmp_path, monkeypatch):
    records = tmp_path / "records"
    junk(records, "2026-01-01_pipes", lambda r: r.update(description="a | b\r| c\n| d \u202e e"))
    monkeypatch.setattr("records.leaderboard.validate", lambda path, tracks: ([], []))
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    write_leaderboard(str(records), str(readme), str(runs["tracks"]))
    text = readme.read_text()
    row = next(l for l in text.splitlines() if "| pipes |" in l)
    assert "\r" not in text and "\u202e" not in text and "a \\| b \\| c \\| d e" in row
    assert row.count(" | ") == len(leaderboard.HEADERS) + 1 - 1  # the cells' own pipes are escaped


def test_the_leaderboard_is_written_whole_or_not_at_all(runs, tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    page, readme = records / "leaderboard.html", tmp_path / "README.md"
    page.write_text("old page\n")
    readme.write_text("old readme\n")

    def crash(*args):
        raise RuntimeError("the page could not be built")

    monkeypatch.setattr("records.leaderboard.html_page", crash)
    with pytest.raises(RuntimeError):
        write_leaderboard(str(records), str(readme), str(runs["tracks"]))
    monkeypatch.setattr("records.leaderboard.html_page", lambda *args: "new page\n")
    monkeypatch.setattr("records.leaderboard.os.replace", crash)
    with pytest.raises(RuntimeError):
        write_leaderboard(str(records), str(readme), str(runs["tracks"]))
    assert page.read_text() == "old page\n" and readme.read_text() == "old readme\n"
    assert sorted(os.listdir(records)) == ["leaderboard.html"] and sorted(os.listdir(tmp_path)) == ["README.md",
                                                                                                    "records"]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, "", e.headers


def test_the_page_is_served_on_localhost(tmp_path):
    page = tmp_path / "leaderboard.html"
    page.write_text("<h1>Speedrun leaderboard</h1>\n")
    server = leaderboard.make_server(str(page), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        status, body, headers = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "Speedrun leaderboard" in body
        assert "default-src 'none'" in headers["Content-Security-Policy"]  # no script runs, whatever a record says
        assert get(f"http://127.0.0.1:{port}/leaderboard.html")[0] == 200
        assert get(f"http://127.0.0.1:{port}/../tracks.json")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_records_leaderboard_serve_writes_then_serves_until_stopped(runs, tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    monkeypatch.setattr("records.__main__.RECORDS_DIR", str(records))
    servers, make_server = [], leaderboard.make_server
    monkeypatch.setattr(leaderboard, "make_server", lambda *args: servers.append(make_server(*args)) or servers[-1])
    done = []
    argv = ["--tracks", str(runs["tracks"]), "leaderboard", "--readme", str(readme), "--serve", "--port", "0"]
    thread = threading.Thread(target=lambda: done.append(records_main(argv)), daemon=True)
    thread.start()
    for _ in range(200):
        if servers:
            break
        time.sleep(0.05)
    status, body, _ = get(f"http://127.0.0.1:{servers[0].server_address[1]}/")
    assert status == 200 and "<h2 id=\"below\">below</h2>" in body
    servers[0].shutdown()
    thread.join(10)
    assert done == [0]


# -----------------------------------------------------------------------------
# 8. Submission metadata


@pytest.mark.parametrize("field, value, reason", [
    ("author", "", "'author' is blank"), ("author", "x" * 101, "'author' is 101 characters; at most 100"),
    ("author", "Ada\nFAIL", "'author' holds a control"), ("author", 7, "'author' is not a string"),
    ("affiliation", "Lab\u202e", "'affiliation' holds a bidi control"),
    ("url", "javascript:alert(1)", "is not an http(s) URL"), ("url", "ftp://example.com/x", "is not an http(s) URL"),
    ("url", "https://github.com@evil.example/x", "(and no user name)"),
    ("run_link", "https://wandb.ai/a b", "has characters other than visible ASCII"),
    ("run_link", "https://x.example/" + "a" * 500, "at most 500 characters")])
def test_submission_fields_are_checked(runs, tmp_path, field, value, reason):
    record = make(runs, tmp_path)
    edit_json(record, lambda d: d.update({field: value}))
    (problem,) = failures(runs, record)
    assert problem.startswith(f"{record / 'results.json'}: ") and reason in problem


def test_a_record_dated_from_2026_12_04_needs_an_author_and_an_older_one_does_not(runs, tmp_path):
    record = make(runs, tmp_path, author=None, date="2026-12-04")
    (problem,) = failures(runs, record)
    assert "'author' is missing: records dated 2026-12-04 or later name who made them" in problem
    assert failures(runs, make(runs, tmp_path / "old", author=None, date="2026-12-03")) == []


def test_records_new_takes_the_submission_fields_and_the_leaderboard_shows_them_escaped(runs, tmp_path,
                                                                                       monkeypatch):
    records = tmp_path / "records"
    out = records / "below" / f"{TODAY}_shown"
    checked_with(monkeypatch, runs)
    assert records_main(["--tracks", str(runs["tracks"]), "new", "--track", "below", "--slug", "shown", "--out",
                         str(out), "--author", "Ada <b>", "--affiliation", "Lab & Co", "--url",
                         "https://github.com/ada/speedrun", "--run-link", "https://wandb.ai/ada/r?x=1&y=2",
                         *map(str, runs["dirs"])]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert (saved["author"], saved["affiliation"], saved["run_link"]) == ("Ada <b>", "Lab & Co",
                                                                          "https://wandb.ai/ada/r?x=1&y=2")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    write_leaderboard(str(records), str(readme), str(runs["tracks"]))
    page = (records / "leaderboard.html").read_text()
    assert "Ada &lt;b&gt; (Lab &amp; Co)" in page and "<b>" not in page
    assert '<a href="https://wandb.ai/ada/r?x=1&amp;y=2" rel="nofollow noopener noreferrer">run</a>' in page
    assert "Ada &lt;b&gt; \\(Lab &amp; Co\\)" in readme.read_text()


def test_records_new_refuses_a_link_that_is_not_http(runs, tmp_path, capsys):
    argv = ["--tracks", str(runs["tracks"]), "new", "--track", "below", "--slug", "bad-link", "--out",
            str(tmp_path / "below" / "r"), "--author", "Ada", "--url", "javascript:alert(1)", *map(str, runs["dirs"])]
    assert records_main(argv) == 1
    assert "'url' javascript:alert(1) is not an http(s) URL" in capsys.readouterr().err
    assert not (tmp_path / "below").exists()


# -----------------------------------------------------------------------------
# 9. Pins from public facts, each with its source


FINEWEB_VAL = "5b95c8e0966f0861685b307b23dc5ae42b228ef74b28cb499784ae021f201640"
CLIMBMIX_VAL = "769fe59d108dfd2cfa186c63173b83fbfb90a7adb3519519ba6eaa6ca9889f94"
EVAL_BUNDLE = "90a7c19e28ee7a52b4f6e1f87658deb9fde7f63deba2379045bdb1fe9ea5d200"


def test_every_track_is_pinned_and_every_pin_says_where_it_came_from():
    tracks = load_tracks()
    for track_id in ("gpt2-small-fineweb", "1gpu-hopper", "1gpu-ampere"):
        assert tracks[track_id]["data"]["val_shards_sha256"] == [FINEWEB_VAL]
    for track_id in ("gpt2-core", "flops-1e18", "flops-1e19"):
        assert tracks[track_id]["data"]["val_source_sha256"] == [CLIMBMIX_VAL]
    core = tracks["gpt2-core"]["core"]
    assert core["bundle_zip_sha256"] == EVAL_BUNDLE and core["bundle_files_sha256"] == {
        "eval_bundle/core.yaml": "463f6ae0aa127fbd41fa655f8919e136858f4849eef176922a3be96e102ce7e7",
        "eval_bundle/eval_meta_data.csv": "84e279cdc0d836c9ea3a6e55a99102f8ee18f72809fe7aa6ac5a1fe630aa492f"}
    for track in tracks.values():
        pins, unpinned = track_pins(track)
        assert unpinned == [] and set(track["pin_sources"]) == set(pins), track["id"]
        assert all(isinstance(note, str) and len(note) > 20 for note in track["pin_sources"].values())
        shas = [v for k, v in pins.items() if k.endswith("sha256")]
        flat = [s for v in shas for s in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else [v])]
        assert all(re.fullmatch(r"[0-9a-f]{64}", s) for s in flat), track["id"]


def test_a_fully_pinned_track_accepts_a_record_and_a_refusal_names_the_pin_and_its_source(runs, tmp_path):
    data = runs["data"]
    tracks = tracks_for({"tokenizer_sha256": data["tokenizer_sha256"], "val_bytes": data["val_bytes"],
                         "val_source_sha256": [f["sha256"] for f in data["val_source"]]})
    pinned = dict(tracks["tracks"][0], id="pinned", data=dict(
        tracks["tracks"][0]["data"], val_shards_sha256=[f["sha256"] for f in data["val_shards"]]))
    pinned["pin_sources"] = {key: f"the fixture's {key}" for key in pinned["data"]}
    tracks["tracks"].append(pinned)
    path = tmp_path / "tracks.json"
    path.write_text(json.dumps(tracks))
    record = Path(new_record("pinned", "test", [str(d) for d in runs["dirs"]], out=str(tmp_path / "record"),
                             tracks_file=str(path), author="A. Tester"))
    assert validate(str(record), str(path), repo=str(runs["repo"]))[0] == []
    pinned["data"]["val_shards_sha256"] = ["0" * 64]
    path.write_text(json.dumps(tracks))
    problems, _ = validate(str(record), str(path), repo=str(runs["repo"]))
    assert len(problems) == 3 and all("are not the track's ['000000000000'] (pin pinned: val_shards_sha256 in "
                                      "tracks.json; source: the fixture's val_shards_sha256)" in p for p in problems)


def test_the_repository_has_no_results_json_outside_its_track_folders():
    found, refused = trust.find_records(str(REPO / "records"), load_tracks())
    assert refused == [] and found
