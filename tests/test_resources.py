"""What a run used besides its timed work, measured in every run's log (harness/resources.py), each figure against an
independent measurement of a run made to use a known amount: a large embedding table, host memory, a long untimed
phase; and a track's rules on them (tracks.json `rules`), which validate checks: a broken rule is refused naming it,
a kept one passes, a record from before the figures is "not measured"."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ideas import REPO, idea, train
from tests.test_records import runs  # noqa: F401  (fixture)
from tests.test_train import options, shards  # noqa: F401  (fixtures)


def resources(run_dir):
    line = next(l for l in (Path(run_dir) / "log.txt").read_text().splitlines() if l.startswith("resources: "))
    return json.loads(line[len("resources: "):])


HASH_TABLE = (
    ('''        self.head = Linear(dim, padded_vocab, normed_input=True, mean_loss_head=True)  # untied from the embedding''',
     '''        self.head = Linear(dim, padded_vocab, normed_input=True, mean_loss_head=True)  # untied from the embedding
        self.bigram_table = nn.Embedding(100_000, 4)  # a hashed n-gram table (unused here: its size is the point)'''),
    ('''        Rule(r"blocks\\.\\d+\\.attn\\.value_mix", "adamw", **adam["value_mix"]),''',
     '''        Rule(r"blocks\\.\\d+\\.attn\\.value_mix", "adamw", **adam["value_mix"]),
        Rule(r"bigram_table\\.weight", "adamw", config.embed_lr),'''),
)
HOST_MEMORY_AND_SLOW_SETUP = (
    ('''        self.reset_parameters()
        if config.embed_dtype == "bf16":''',
     '''        self.reset_parameters()
        import time
        self.host_cache = torch.ones(100_000_000, dtype=torch.uint8)  # 100 MB kept in host memory for the run
        time.sleep(1.5)  # work done before the clock starts
        if config.embed_dtype == "bf16":'''),
)


def test_parameters_by_kind_count_an_embedding_table_by_its_rows(options, tmp_path):
    plain, hashed = idea(tmp_path), idea(tmp_path, *HASH_TABLE)
    base, _ = train(plain, options, run_id="plain")
    results, _ = train(hashed, options, run_id="hashed")
    mine, theirs = resources(tmp_path / "runs" / "hashed"), resources(tmp_path / "runs" / "plain")
    assert mine["params"]["embedding_rows"] - theirs["params"]["embedding_rows"] == 100_000
    assert mine["params"]["embedding"] - theirs["params"]["embedding"] == 400_000 == results["params"] - base["params"]
    assert mine["params"]["matrices"] == theirs["params"]["matrices"]


def test_host_memory_and_an_untimed_phase_agree_with_an_independent_measurement(options, tmp_path):
    """The recipe run as its own process under /usr/bin/time: the logged peak host memory is that process's peak
    (GNU time's maximum resident set, read from the same kernel accounting at exit), 100 MB above the plain recipe's;
    the 1.5 s slept in set-up is in the untimed set-up, not the training time."""
    figures = {}
    for name, edits in (("plain", ()), ("heavy", HOST_MEMORY_AND_SLOW_SETUP)):
        recipe = idea(tmp_path, *edits)
        args = [f"--{k}={v}" for k, v in {**options, "run_id": name}.items()]
        timed = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, recipe.__file__, *args],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                               capture_output=True, text=True, timeout=300)
        assert timed.returncode == 0, timed.stderr[-2000:]
        measured = int(timed.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) * 1024
        figures[name] = (resources(tmp_path / "runs" / name), measured)
    for logged, measured in figures.values():
        assert 0.9 * measured <= logged["host_peak_bytes"][0] <= measured  # the peak so far, read before exit
    heavy, plain = figures["heavy"][0], figures["plain"][0]
    assert heavy["host_peak_bytes"][0] - plain["host_peak_bytes"][0] >= 90e6
    assert heavy["untimed_s"]["setup"] - plain["untimed_s"]["setup"] >= 1.4
    assert heavy["gpu_peak_bytes"] is None and heavy["loop_cpu_s"][0] > 0


def test_a_record_from_before_the_figures_is_not_measured():
    from records.record import validate
    committed = sorted((REPO / "records" / "cpu-smoke").iterdir())[0]
    _, notes = validate(str(committed))
    assert "resources: not measured" in notes


def test_a_tracks_rules_refuse_a_record_that_breaks_one_and_pass_one_that_keeps_them(runs, tmp_path):  # noqa: F811
    """validate against the track's rules: kept, it passes and says so; broken, one line per run names the rule and
    the figure; a run at a commit that measures resources may not lose its line."""
    from records.record import validate
    from tests.test_records import make
    record = make(runs, tmp_path)
    figures = resources_of_log(record / "logs" / "seed0.txt")
    rows = figures["params"]["embedding_rows"]
    for rules, broken in (({"max_embedding_rows": rows, "max_untimed_s": 3600}, None),
                          ({"max_embedding_rows": rows - 1}, "max_embedding_rows")):
        tracks = json.loads(runs["tracks"].read_text())
        for track in tracks["tracks"]:
            track["rules"] = rules
        path = tmp_path / f"tracks_{len(rules)}.json"
        path.write_text(json.dumps(tracks))
        problems, notes = validate(str(record), str(path), repo=str(runs["repo"]))
        if broken is None:
            assert problems == [] and f"resources: kept: {', '.join(sorted(rules))}" in notes
        else:
            assert len(problems) == 3 and all(f"embedding-table rows {rows:,} breaks the track's rule {broken} = "
                                              f"{rows - 1:,}" in p for p in problems), problems
    edit = lambda l: None if l.startswith("resources: ") else l
    from tests.test_records import edit_log
    edit_log(record / "logs" / "seed0.txt", edit)  # its commit measures resources: the line may not go missing
    problems, _ = validate(str(record), str(runs["tracks"]), repo=str(runs["repo"]))
    assert any("no resources line" in p for p in problems), problems


def resources_of_log(path):
    line = next(l for l in Path(path).read_text().splitlines() if l.startswith("resources: "))
    return json.loads(line[len("resources: "):])


CPU_IN_THE_LOOP_AND_A_FILE_READ = (
    ('''        self.reset_parameters()
        if config.embed_dtype == "bf16":''',
     '''        self.reset_parameters()
        import os
        with open(os.environ["IDEA_TABLE"], "rb") as f:  # 30 MB read at set-up: a table from outside the shards
            self.table_bytes = len(f.read())
        if config.embed_dtype == "bf16":'''),
    ('''    inputs, targets = trainer.loader.next_batch()''',
     '''    inputs, targets = trainer.loader.next_batch()
    import time
    spin = time.process_time() + 0.2
    while time.process_time() < spin:  # 0.2 s of host CPU work in every step: a CPU-side lookup, say
        pass'''),
)


def test_cpu_time_in_the_loop_and_bytes_read_agree_with_what_the_run_was_made_to_do(options, tmp_path, monkeypatch):
    """0.2 s of CPU in each of 6 timed steps is at least 1.2 s of CPU time in the loop; a 30 MB file read at set-up
    is at least 30 MB more read before training (the shards are memory-mapped, not read)."""
    table = tmp_path / "table.bin"
    table.write_bytes(os.urandom(30_000_000))
    monkeypatch.setenv("IDEA_TABLE", str(table))
    train(idea(tmp_path), options, run_id="plain")
    train(idea(tmp_path, *CPU_IN_THE_LOOP_AND_A_FILE_READ), options, run_id="busy")
    plain, busy = resources(tmp_path / "runs" / "plain"), resources(tmp_path / "runs" / "busy")
    # at least the 6 spins (the rest of a step's work varies from run to run, so not "plain + 1.2")
    assert busy["loop_cpu_s"][0] >= 1.2 > plain["loop_cpu_s"][0] + 0.5
    assert busy["read_setup_bytes"] - plain["read_setup_bytes"] >= 30_000_000
    assert busy["read_loop_bytes"] < 30_000_000  # the loop itself read no table
