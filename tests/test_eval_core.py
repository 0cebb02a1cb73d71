"""eval_core.py on CPU: the CORE rules (tasks, prompts, scored spans, scoring, centering), the batched fast path
against a per-example reference (tests/core_reference.py), 1 vs 2 gloo processes, the report, the bundle download
and its checks, and bad input.

The bundle is tests/core_fixture.py: all 22 tasks with their real settings and a dozen hand-written rows each.
The model is a tiny one trained for a few steps on the synthetic corpus of conftest.py (seq_len 64, so that many
prompts must be cut from the left).
"""

import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

import eval_core
from data.tokenizer import load_tokenizer
from eval_core import EvalError, Sequence, Task, main
from tests.core_fixture import lm, make_zip, mc, schema, write_bundle
from tests.core_reference import reference_core, reference_predictions, render_prompts, row_scores
from tests.test_train import run, shards  # noqa: F401  (shards: the session's token shards, a fixture)

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
NO_AUTOCAST = torch.autocast("cpu", enabled=False)
SEQ_LEN = 64

# The 22 CORE tasks: label, icl_task_type, num_fewshot, continuation_delimiter, random baseline (%).
CORE_TASKS = [
    ("hellaswag_zeroshot", "multiple_choice", 0, " ", 25),
    ("jeopardy", "language_modeling", 10, "\nAnswer: ", 0),
    ("bigbench_qa_wikidata", "language_modeling", 10, " ", 0),
    ("arc_easy", "multiple_choice", 10, "\nAnswer: ", 25),
    ("arc_challenge", "multiple_choice", 10, "\nAnswer: ", 25),
    ("copa", "multiple_choice", 0, " ", 50),
    ("commonsense_qa", "multiple_choice", 10, " ", 20),
    ("piqa", "multiple_choice", 10, "\nAnswer: ", 50),
    ("openbook_qa", "multiple_choice", 0, " ", 25),
    ("lambada_openai", "language_modeling", 0, " ", 0),
    ("hellaswag", "multiple_choice", 10, " ", 25),
    ("winograd", "schema", 0, " ", 50),
    ("winogrande", "schema", 0, " ", 50),
    ("bigbench_dyck_languages", "language_modeling", 10, " ", 0),
    ("agi_eval_lsat_ar", "multiple_choice", 3, " ", 20),
    ("bigbench_cs_algorithms", "language_modeling", 10, " ", 0),
    ("bigbench_operators", "language_modeling", 10, " ", 0),
    ("bigbench_repeat_copy_logic", "language_modeling", 10, " ", 0),
    ("squad", "language_modeling", 10, " ", 0),
    ("coqa", "language_modeling", 0, " ", 0),
    ("boolq", "multiple_choice", 10, "\nAnswer: ", 62),
    ("bigbench_language_identification", "multiple_choice", 10, " ", 9.1),
]


# -----------------------------------------------------------------------------
# Fixtures: the bundle, the tokenizer, one trained run for the whole module


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="module")
def trained(shards, tokenizer_dir, tmp_path_factory):  # noqa: F811
    """runs/run: a tiny model trained for 30 steps (a few seconds); its results (val_bpb on 2048 val tokens)."""
    out = tmp_path_factory.mktemp("runs")
    options = dict(train_files=f"{shards}/train_*.bin", val_files=f"{shards}/val_*.bin", tokenizer=str(tokenizer_dir),
                   depth=2, model_dim=32, head_dim=16, seq_len=SEQ_LEN, short_window=16, device_batch=2,
                   total_batch_tokens=256, steps=30, warmup_steps=3, warmup_timing_steps=1, val_tokens=2048,
                   val_every=0, out_dir=str(out), run_id="run", device="cpu")
    results, _ = run(options)
    return out / "run", results


@pytest.fixture(scope="module")
def model(trained):
    model, config, _ = eval_core.load_run(str(trained[0]), CPU)
    assert config.seq_len == SEQ_LEN
    return model


@pytest.fixture(scope="module")
def tasks(bundle):
    return eval_core.load_tasks(bundle)


@pytest.fixture(scope="module")
def reference(model, tasks, tok):
    """The per-example reference's choices, CORE and accuracies on the fixture bundle."""
    chosen = reference_predictions(model, tasks, tok, SEQ_LEN)
    return chosen, *reference_core(model, tasks, tok, SEQ_LEN, chosen)


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run folder that a test may write its reports into."""
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


@pytest.fixture
def cpu_only(monkeypatch):
    """main() picks CUDA when there is one; these tests compare against CPU numbers."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -----------------------------------------------------------------------------
# The bundle's tasks


def test_the_fixture_bundle_parses_into_exactly_the_22_core_tasks(bundle):
    tasks = eval_core.load_tasks(bundle)
    assert [(t.label, t.kind, t.shots, t.delimiter) for t in tasks] == [row[:4] for row in CORE_TASKS]
    for task, (*_, baseline) in zip(tasks, CORE_TASKS):
        assert task.baseline == pytest.approx(baseline / 100, abs=1e-12), task.label
        assert len(task.rows) >= task.shots + 2, task.label
    # the file names the delimiter only where it is not " ", as the real core.yaml does: " " is the default
    specs = {s["label"]: s for s in yaml.safe_load(Path(bundle, "core.yaml").read_text())["icl_tasks"]}
    assert "continuation_delimiter" not in specs["copa"] and specs["jeopardy"]["continuation_delimiter"] == "\nAnswer: "
    with open(Path(bundle, "eval_meta_data.csv"), newline="") as f:
        assert {"mmlu_fewshot", "gsm8k"} <= {row["Eval Task"] for row in csv.DictReader(f)}  # extra rows: ignored
    assert [r["gold"] for r in tasks[0].rows] == [r["gold"] for r in tasks[10].rows]  # both hellaswags: one file


def test_rows_are_shuffled_with_seed_1337_then_cut_to_max_per_task(bundle):
    raw = [json.loads(line) for line in Path(bundle, "eval_data/commonsense_reasoning/copa.jsonl").open()]
    (copa,) = eval_core.load_tasks(bundle, max_per_task=4, labels=["copa"])
    # random.Random(1337).shuffle of 12 rows puts rows 6, 0, 1, 4 first
    assert copa.rows == [raw[6], raw[0], raw[1], raw[4]]
    assert copa.rows[0]["query"] == "The car ran out of gas, so"
    whole = eval_core.load_tasks(bundle, labels=["copa"])[0]
    assert whole.rows[:4] == copa.rows and len(whole.rows) == 12


def test_a_task_subset_keeps_core_yaml_order(bundle):
    tasks = eval_core.load_tasks(bundle, labels=["winograd", "copa", "squad"])
    assert [t.label for t in tasks] == ["copa", "winograd", "squad"]


# -----------------------------------------------------------------------------
# Prompts: golden strings


def test_multiple_choice_prompts_few_shot_blocks_then_one_prompt_per_choice():
    rows = [mc("Which is a fruit?", ["apple", "stone"], 0), mc("Which is hot?", ["ice", "fire"], 1),
            mc("Which can fly?", ["a bird", "a rock"], 0), mc("Which is wet?", ["sand", "water"], 1)]
    task = Task("t", "multiple_choice", 2, "\nAnswer: ", 0.5, rows)
    # row i's shots: random.Random(1234 + i).sample over the other rows' indices
    assert [random.Random(1234 + i).sample([j for j in range(4) if j != i], 2) for i in range(4)] == \
        [[2, 1], [3, 2], [3, 1], [0, 1]]
    assert eval_core.render(task, 0) == [
        "Which can fly?\nAnswer: a bird\n\nWhich is hot?\nAnswer: fire\n\nWhich is a fruit?\nAnswer: apple",
        "Which can fly?\nAnswer: a bird\n\nWhich is hot?\nAnswer: fire\n\nWhich is a fruit?\nAnswer: stone"]
    assert eval_core.render(task, 3) == [
        "Which is a fruit?\nAnswer: apple\n\nWhich is hot?\nAnswer: fire\n\nWhich is wet?\nAnswer: sand",
        "Which is a fruit?\nAnswer: apple\n\nWhich is hot?\nAnswer: fire\n\nWhich is wet?\nAnswer: water"]
    zero_shot = Task("t", "multiple_choice", 0, " ", 0.5, rows)
    assert eval_core.render(zero_shot, 1) == ["Which is hot? ice", "Which is hot? fire"]


def test_schema_prompts_one_per_context_option_each_ending_in_the_continuation():
    rows = [schema(["The cup fell because the cup", "The cup fell because the table"], "was slippery.", 0),
            schema(["Ann thanked Bo because Ann", "Ann thanked Bo because Bo"], "had helped her.", 1),
            schema(["The ice melted since the ice", "The ice melted since the sun"], "was warm.", 1)]
    task = Task("t", "schema", 1, " ", 0.5, rows)  # shots: row 0 gets row 2, row 2 gets row 1
    assert eval_core.render(task, 0) == [
        "The ice melted since the sun was warm.\n\nThe cup fell because the cup was slippery.",
        "The ice melted since the sun was warm.\n\nThe cup fell because the table was slippery."]
    assert eval_core.render(task, 2) == [
        "Ann thanked Bo because Bo had helped her.\n\nThe ice melted since the ice was warm.",
        "Ann thanked Bo because Bo had helped her.\n\nThe ice melted since the sun was warm."]


def test_language_modelling_prompts_strip_contexts_and_the_whole_prompt_without_the_continuation():
    rows = [lm("  SCIENCE: The Red Planet \n", "Mars"), lm("MUSIC: It has 88 keys", "the piano"),
            lm("\tFOOD: Guacamole's main fruit ", "the avocado"), lm("SPORTS: Played at Wimbledon", "tennis")]
    task = Task("jeopardy", "language_modeling", 2, "\nAnswer: ", 0.0, rows)  # row 0's shots: rows 2, 1
    shots = "FOOD: Guacamole's main fruit\nAnswer: the avocado\n\nMUSIC: It has 88 keys\nAnswer: the piano\n\n"
    without, with_ = eval_core.render(task, 0)
    assert without == shots + "SCIENCE: The Red Planet\nAnswer:"  # the delimiter's trailing space stripped
    assert with_ == shots + "SCIENCE: The Red Planet\nAnswer: Mars"
    zero_shot = Task("t", "language_modeling", 0, " ", 0.0, [lm(" The capital of France is  ", "Paris")])
    assert eval_core.render(zero_shot, 0) == ["The capital of France is", "The capital of France is Paris"]
    on_its_own_line = Task("t", "language_modeling", 0, "\nA:\n", 0.0, [lm("Q: 2 + 2", "4")])
    assert eval_core.render(on_its_own_line, 0) == ["Q: 2 + 2\nA:", "Q: 2 + 2\nA:\n4"]


def test_the_cap_applies_before_few_shot_sampling(tmp_path):
    """6 rows shuffled (seed 1337) to r1 r0 r3 r2 r5 r4; with --max-per-task 4 the shots come from the first 4."""
    rows = [lm(f"{n} plus one is", m) for n, m in
            zip(["Zero", "One", "Two", "Three", "Four", "Five"], ["one", "two", "three", "four", "five", "six"])]
    bundle = tmp_path / "eval_bundle"
    (bundle / "eval_data" / "x").mkdir(parents=True)
    (bundle / "eval_data" / "x" / "count.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (bundle / "core.yaml").write_text("icl_tasks:\n- label: count\n  dataset_uri: x/count.jsonl\n"
                                      "  num_fewshot: [2]\n  icl_task_type: language_modeling\n")
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\ncount,0\n")
    (capped,) = eval_core.load_tasks(str(bundle), max_per_task=4)
    (whole,) = eval_core.load_tasks(str(bundle))
    assert [r["context"] for r in capped.rows] == ["One plus one is", "Zero plus one is", "Three plus one is",
                                                   "Two plus one is"]
    assert eval_core.render(capped, 0)[1] == "Three plus one is four\n\nZero plus one is one\n\nOne plus one is two"
    assert eval_core.render(whole, 0)[1] == "Five plus one is six\n\nZero plus one is one\n\nOne plus one is two"


def test_prompts_equal_the_oracles_independent_rendering_on_every_fixture_row(tasks):
    for task in tasks:
        for row in range(len(task.rows)):
            assert eval_core.render(task, row) == render_prompts(task, row), (task.label, row)


# -----------------------------------------------------------------------------
# Scored spans


def test_multiple_choice_scores_the_tokens_after_the_common_prefix():
    task = Task("t", "multiple_choice", 0, " ", 0.25, [])
    assert eval_core.scored_spans(task, [[0, 5, 6, 7], [0, 5, 6, 8, 9], [0, 5, 6, 7, 1]]) == [(3, 4), (3, 5), (3, 5)]
    # a choice that is a token prefix of every other one has nothing left to score (the reference's rule), and the
    # others score only what follows it
    assert eval_core.scored_spans(task, [[0, 5, 6], [0, 5, 6, 7]]) == [(3, 3), (3, 4)]
    assert eval_core.scored_spans(task, [[0, 5, 6, 7, 8], [0, 5, 6], [0, 5, 6, 7]]) == [(3, 5), (3, 3), (3, 4)]
    # a prefix of some choices but not of all: the common prefix ends before it
    assert eval_core.scored_spans(task, [[0, 5, 6], [0, 5, 6, 7], [0, 5, 8]]) == [(2, 3), (2, 4), (2, 3)]
    assert eval_core.scored_spans(task, [[0, 5], [0, 5]]) == [(2, 2), (2, 2)]  # identical choices: nothing


def test_schema_scores_the_common_suffix():
    task = Task("t", "schema", 0, " ", 0.5, [])
    assert eval_core.scored_spans(task, [[0, 2, 3, 8, 9], [0, 4, 8, 9]]) == [(3, 5), (2, 4)]
    # an option that is a token suffix of another: the BOS (position 0) ends the common suffix
    assert eval_core.scored_spans(task, [[0, 8, 9], [0, 7, 8, 9]]) == [(1, 3), (2, 4)]
    # identical options: all of it is common suffix, start 0 (build_sequences makes that an empty span)
    assert eval_core.scored_spans(task, [[0, 8, 9], [0, 8, 9]]) == [(0, 3), (0, 3)]


def test_spans_on_real_prompts_new_york_new_jersey_and_a_shared_suffix(tok):
    task = Task("t", "multiple_choice", 0, " ", 0.25,
                [mc("The largest city in the United States is", ["New York", "New Jersey", "New Orleans"], 0)])
    token_lists = [[tok.bos_id] + tok.encode(p) for p in eval_core.render(task, 0)]
    spans = eval_core.scored_spans(task, token_lists)
    assert len({start for start, _ in spans}) == 1
    assert [tok.decode(t[s:e]).strip() for t, (s, e) in zip(token_lists, spans)] == ["York", "Jersey", "Orleans"]
    assert tok.decode(token_lists[0][1:spans[0][0]]).rstrip() == "The largest city in the United States is New"

    task = Task("t", "schema", 0, " ", 0.5,
                [schema(["He gave the book to John's sister", "He gave the book to Mary's sister"],
                        "because John asked him to.", 0)])
    token_lists = [[tok.bos_id] + tok.encode(p) for p in eval_core.render(task, 0)]
    spans = eval_core.scored_spans(task, token_lists)
    # the common suffix reaches past the continuation into the options' shared "'s sister"
    assert [tok.decode(t[s:e]) for t, (s, e) in zip(token_lists, spans)] == \
        ["'s sister because John asked him to."] * 2


def test_language_modelling_scores_the_continuation_after_the_prompt_without_it(tok):
    task = Task("t", "language_modeling", 0, "\nAnswer: ", 0.0, [lm("SCIENCE: The Red Planet", "Mars")])
    without, with_ = ([tok.bos_id] + tok.encode(p) for p in eval_core.render(task, 0))
    assert eval_core.scored_spans(task, [without, with_]) == [(len(without), len(with_))]
    assert tok.decode(with_[len(without):]) == " Mars"


def test_a_prompt_without_its_continuation_that_is_not_a_token_prefix_is_an_error(tok):
    task = Task("split", "language_modeling", 0, " ", 0.0, [])
    with pytest.raises(EvalError, match="split: the prompt without its continuation does not tokenize as a prefix"):
        eval_core.scored_spans(task, [[0, 3, 4], [0, 3, 5, 6]])
    # for real: "th" is one token and "the" another, so "th" + "" + "e" does not extend "th"'s tokens
    assert tok.encode("the")[:len(tok.encode("th"))] != tok.encode("th")
    task = Task("split", "language_modeling", 0, "", 0.0, [lm("th", "e")])
    with pytest.raises(EvalError, match="does not tokenize as a prefix"):
        eval_core.build_sequences([task], tok, SEQ_LEN)


def test_long_prompts_are_cut_from_the_left_keeping_the_span(tasks, tok):
    sequences = eval_core.build_sequences(tasks, tok, SEQ_LEN)
    cut = [s for s in sequences if s.truncated]
    assert 0 < len(cut) < len(sequences)
    assert {tasks[s.task].label for s in cut} >= {"agi_eval_lsat_ar", "squad", "coqa", "hellaswag"}
    for s in sequences:
        assert len(s.tokens) <= SEQ_LEN and 1 <= s.start <= s.end == len(s.tokens)  # the span ends every prompt
    for s in cut[:50]:
        prompts = eval_core.render(tasks[s.task], s.row)
        full = [[tok.bos_id] + tok.encode(p) for p in prompts]
        assert s.tokens in [f[-SEQ_LEN:] for f in full] and len(s.tokens) == SEQ_LEN


def test_a_span_longer_than_the_context_is_an_error(tasks, tok):
    (squad,) = [t for t in tasks if t.label == "squad"]
    with pytest.raises(EvalError, match=r"squad row \d+: the scored span \(\d+ tokens\) does not fit the model's "
                                        "context of 3"):
        eval_core.build_sequences([squad], tok, 3)


# -----------------------------------------------------------------------------
# Choosing, accuracy, centering, CORE


def test_the_lowest_mean_loss_wins_ties_to_the_first_and_lm_needs_every_token_greedy():
    tasks = [Task("m", "multiple_choice", 0, " ", 0.25, [mc("q", ["a", "b", "c"], 1)] * 2),
             Task("l", "language_modeling", 0, " ", 0.0, [lm("c", "x")] * 2)]
    sequences = [Sequence([0, choice], 1, 2, 0, row, False) for row in range(2) for choice in (1, 2, 3)] + \
        [Sequence([0, 1], 1, 2, 1, 0, False), Sequence([0, 1], 1, 2, 1, 1, False)]
    results = torch.tensor([[2.0, 0], [1.5, 0], [1.5, 0], [0.7, 1], [0.9, 1], [0.6, 0], [3.0, 1], [0.1, 0]],
                           dtype=torch.float64)
    chosen = eval_core.predictions(tasks, sequences, results)
    assert chosen == [[1, 2], [True, False]]
    assert eval_core.accuracy(tasks[0], chosen[0]) == 0.5 and eval_core.accuracy(tasks[1], chosen[1]) == 0.5


def test_pick_is_pythons_min_then_index_nans_included():
    """The reference picks with mean_losses.index(min(mean_losses)): a NaN first wins, a NaN elsewhere never does."""
    nan = float("nan")
    assert eval_core.pick([nan, 1.0, 0.5]) == 0 and eval_core.pick([1.0, nan, 0.5]) == 2
    assert eval_core.pick([0.5, nan, 0.5]) == 0 and eval_core.pick([nan, nan]) == 0 and eval_core.pick([2.0, nan]) == 0
    rng = random.Random(0)
    for _ in range(2000):
        losses = [rng.choice([nan, 0.5, 1.0, 1.5, 2.0, rng.random()]) for _ in range(rng.randint(1, 5))]
        assert eval_core.pick(losses) == losses.index(min(losses)), losses


def test_identical_prompts_of_a_row_tie_even_when_their_losses_differ_in_the_last_bits():
    """Scored in different padded batches, two identical prompts may differ by rounding; in the reference (one batch
    per row) they tie, and the first wins."""
    task = Task("m", "multiple_choice", 0, " ", 0.25, [mc("q", ["a", "b", "a"], 2)])
    sequences = [Sequence([0, 7, choice], 2, 3, 0, 0, False) for choice in (1, 2, 1)]
    results = torch.tensor([[1.0, 0], [1.2, 0], [1.0 - 1e-7, 0]], dtype=torch.float64)
    assert eval_core.predictions([task], sequences, results) == [[0]]
    results[1, 0] = 0.9
    assert eval_core.predictions([task], sequences, results) == [[1]]


def test_centered_accuracy_and_core_by_hand():
    assert eval_core.centered(0.5, 0.25) == pytest.approx(1 / 3)
    assert eval_core.centered(0.25, 0.25) == 0 and eval_core.centered(1.0, 0.62) == pytest.approx(1.0)
    assert eval_core.centered(0.0, 0.5) == -1.0 and eval_core.centered(0.3, 0.0) == 0.3
    tasks = [Task("a", "multiple_choice", 0, " ", 0.25, [{}] * 4), Task("b", "language_modeling", 10, " ", 0.0, [{}]),
             Task("c", "schema", 0, " ", 0.5, [{}] * 2)]
    core, rows = eval_core.core_score(tasks, [0.5, 0.4, 0.25])
    assert core == pytest.approx((1 / 3 + 0.4 - 0.5) / 3)
    assert rows[0] == {"task": "a", "type": "multiple_choice", "shots": 0, "examples": 4, "accuracy": 0.5,
                       "baseline": 0.25, "centered": pytest.approx(1 / 3)}
    assert [r["centered"] for r in rows[1:]] == [pytest.approx(0.4), pytest.approx(-0.5)]


# -----------------------------------------------------------------------------
# The fast path against the per-example reference


@pytest.mark.parametrize("batch_tokens", [64, 300, 4096])
def test_fast_path_equals_the_per_example_reference(model, tasks, tok, reference, batch_tokens):
    sequences = eval_core.build_sequences(tasks, tok, SEQ_LEN)
    assert any(s.truncated for s in sequences)
    results = eval_core.score_sequences(model, sequences, tok.bos_id, batch_tokens, 0, 1, CPU, NO_AUTOCAST,
                                        max_len=SEQ_LEN, progress=False)
    chosen = eval_core.predictions(tasks, sequences, results)
    reference_chosen, reference_value, reference_accuracies = reference
    assert chosen == reference_chosen
    accuracies = [eval_core.accuracy(t, c) for t, c in zip(tasks, chosen)]
    assert accuracies == reference_accuracies
    assert eval_core.core_score(tasks, accuracies)[0] == pytest.approx(reference_value, abs=1e-12)
    # not a degenerate model: choices differ, and not all the same index
    assert len({c for task, cs in zip(tasks, chosen) if task.kind != "language_modeling" for c in cs}) > 1


def test_fast_path_losses_match_the_reference_prompt_by_prompt(model, tasks, tok):
    sequences = eval_core.build_sequences(tasks, tok, SEQ_LEN)
    results = eval_core.score_sequences(model, sequences, tok.bos_id, 300, 0, 1, CPU, NO_AUTOCAST, max_len=SEQ_LEN,
                                        progress=False)
    by_row = {}
    for s, (loss, exact) in zip(sequences, results.tolist()):
        by_row.setdefault((s.task, s.row), []).append((loss, exact))
    for t, task in enumerate(tasks):
        for row in range(0, len(task.rows), 3):
            expected = row_scores(model, task, row, tok, SEQ_LEN)
            got = by_row[(t, row)]
            if task.kind == "language_modeling":  # the greedy check counts only there
                assert [e for _, e in got] == [float(e) for _, e in expected]
            assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in expected], rel=1e-5, nan_ok=True)


def prefix_tasks():
    """Choices that are token prefixes of each other (New York / New York City), identical choices, identical
    schema options and options that are suffixes of others in text: the cases where the reference's common
    prefix (suffix) leaves a prompt with nothing to score."""
    rows = [mc("The city is", ["New York", "New York City"], 1),              # NaN first: always chosen
            mc("The city is", ["New York City", "New York"], 0),              # NaN second: never chosen
            mc("The fruit is a", ["red", "red apple", "red apple pie"], 2),   # NaN first, the others after "red"
            mc("The fruit is a", ["red apple", "red", "red apple pie"], 0),   # NaN in the middle
            mc("The sky is", ["blue", "blue", "green"], 1),                   # duplicates, scored: the first wins
            mc("The answer is", ["same", "same"], 1),                         # all identical: all NaN
            mc("The city is", ["New York", "New York City", "Boston"], 2),    # a prefix of some, not all: scored
            mc("The dog likes to", ["chase the ball.", "bake a cake."], 0)]
    options = [schema(["The cat", "cat"], "sat on the mat.", 0), schema(["the dog", "the dog"], "ran away.", 1),
               schema(["Anna and Tom", "Tom"], "went home.", 1), schema(["It was Ann", "It was Bo"], "who won.", 0)]
    return [Task("mc_zero", "multiple_choice", 0, " ", 0.25, rows),
            Task("mc_shots", "multiple_choice", 2, "\nAnswer: ", 0.25, rows),
            Task("schema_zero", "schema", 0, " ", 0.5, options),
            Task("schema_shots", "schema", 1, " ", 0.5, options)]


@pytest.mark.parametrize("batch_tokens", [64, 4096])
def test_prefix_choices_fast_path_equals_the_oracle_row_by_row_nan_picks_included(model, tok, batch_tokens):
    tasks = prefix_tasks()
    # the premise: these choices really are token prefixes of each other in this tokenizer
    city = [[tok.bos_id] + tok.encode(p) for p in eval_core.render(tasks[0], 0)]
    assert city[1][:len(city[0])] == city[0] and len(city[1]) > len(city[0])
    sequences = eval_core.build_sequences(tasks, tok, SEQ_LEN)
    results = eval_core.score_sequences(model, sequences, tok.bos_id, batch_tokens, 0, 1, CPU, NO_AUTOCAST,
                                        max_len=SEQ_LEN, progress=False)
    nan_at = {}
    for seq, loss in zip(sequences, results[:, 0].tolist()):
        nan_at.setdefault((seq.task, seq.row), []).append(math.isnan(loss))
    for t, task in enumerate(tasks):
        for row in range(len(task.rows)):
            expected = row_scores(model, task, row, tok, SEQ_LEN)
            assert nan_at[(t, row)] == [math.isnan(loss) for loss, _ in expected], (task.label, row)
    for t in (0, 1):  # which prompts score nothing, by the reference's rule
        assert [nan_at[(t, row)] for row in range(8)] == [
            [True, False], [False, True], [True, False, False], [False, True, False], [False, False, False],
            [True, True], [False, False, False], [False, False]]
    for t in (2, 3):
        assert [nan_at[(t, row)] for row in range(4)] == [[False, False], [True, True], [False, False], [False, False]]
    chosen = eval_core.predictions(tasks, sequences, results)
    assert chosen == reference_predictions(model, tasks, tok, SEQ_LEN)
    for picks in chosen[:2]:
        assert picks[0] == 0 and picks[1] == 0 and picks[2] == 0 and picks[3] in (0, 2) and picks[4] in (0, 2)
        assert picks[5] == 0
    assert chosen[2][1] == chosen[3][1] == 0


def test_a_choice_whose_span_fills_the_cut_context_scores_nothing_as_in_the_reference(model, tok):
    """Cut from the left to max_len, a span of exactly max_len tokens starts at position 0: the reference slices
    its losses from position -1 (the last): nothing, a NaN mean. One token more is an error there and here."""
    long_choice = "one two three four five six seven eight nine ten"
    rows = [mc("Count:", [long_choice, "zero", "ten"], 1), mc("Count:", ["zero", long_choice, "ten"], 1)]
    task = Task("long", "multiple_choice", 0, " ", 0.25, rows)
    tokens = [[tok.bos_id] + tok.encode(p) for p in eval_core.render(task, 0)]
    (start, end), *_ = eval_core.scored_spans(task, tokens)
    span = end - start
    assert span > 3 and len(tokens[0]) > span  # a long span, and a prompt that must be cut
    sequences = eval_core.build_sequences([task], tok, span)
    assert [(s.start, s.end, s.truncated) for s in sequences[:1]] == [(span, span, True)]  # empty, cut
    results = eval_core.score_sequences(model, sequences, tok.bos_id, 4096, 0, 1, CPU, NO_AUTOCAST, max_len=span,
                                        progress=False)
    assert [math.isnan(x) for x in results[:, 0].tolist()] == [True, False, False, False, True, False]
    assert [math.isnan(loss) for row in range(2) for loss, _ in row_scores(model, task, row, tok, span)] == \
        [True, False, False, False, True, False]
    chosen = eval_core.predictions([task], sequences, results)
    assert chosen == reference_predictions(model, [task], tok, span)
    assert chosen[0][0] == 0 and chosen[0][1] != 1
    with pytest.raises(EvalError, match=rf"long row 0: the scored span \({span} tokens\) does not fit the model's "
                                        rf"context of {span - 1} \(the reference evaluator fails on it too\)"):
        eval_core.build_sequences([task], tok, span - 1)


def test_a_continuation_that_fills_the_cut_context_or_is_empty_is_an_error(tok):
    task = Task("cont", "language_modeling", 0, " ", 0.0, [lm("Count:", "one two three four five six")])
    without, with_ = ([tok.bos_id] + tok.encode(p) for p in eval_core.render(task, 0))
    span = len(with_) - len(without)
    assert len(eval_core.build_sequences([task], tok, span + 1)) == 1
    with pytest.raises(EvalError, match=rf"cont row 0: the scored span \({span} tokens\) does not fit"):
        eval_core.build_sequences([task], tok, span)
    empty = Task("empty", "language_modeling", 0, "", 0.0, [lm("The end", "")])
    with pytest.raises(EvalError, match="empty row 0: the continuation is empty"):
        eval_core.build_sequences([empty], tok, SEQ_LEN)


class Lookup(torch.nn.Module):
    """A model that has memorized some continuations: after the same `order` tokens as in a memorized prompt it
    predicts the token that came next there; elsewhere it has no preference (all logits 0: argmax is token 0)."""

    def __init__(self, memorized, vocab_size, order=24):
        super().__init__()
        self.vocab_size, self.order, self.next = vocab_size, order, {}
        for tokens, start, end in memorized:
            for p in range(start, end):
                self.next[tuple(tokens[max(0, p - order):p])] = tokens[p]
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        for b, row in enumerate(idx.tolist()):
            for p in range(len(row)):
                following = self.next.get(tuple(row[max(0, p + 1 - self.order):p + 1]))
                if following is not None:
                    logits[b, p, following] = 1.0
        return logits


def test_greedy_check_on_language_modelling_matches_the_reference(tasks, tok):
    """A model that memorized the continuations of the even rows: those are right, and every odd row is wrong."""
    lm_tasks = [t for t in tasks if t.kind == "language_modeling"]
    memorized = []
    for task in lm_tasks:
        for row in range(0, len(task.rows), 2):
            without, with_ = ([tok.bos_id] + tok.encode(p) for p in eval_core.render(task, row))
            memorized.append((with_, len(without), len(with_)))
    model = Lookup(memorized, tok.vocab_size)
    sequences = eval_core.build_sequences(lm_tasks, tok, SEQ_LEN)
    results = eval_core.score_sequences(model, sequences, tok.bos_id, 300, 0, 1, CPU, NO_AUTOCAST, max_len=SEQ_LEN,
                                        progress=False)
    chosen = eval_core.predictions(lm_tasks, sequences, results)
    assert chosen == reference_predictions(model, lm_tasks, tok, SEQ_LEN)
    assert chosen == [[row % 2 == 0 for row in range(len(t.rows))] for t in lm_tasks]


class Uniform(torch.nn.Module):
    """The same logits everywhere: every choice ties."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size)


def test_ties_go_to_the_first_choice(tasks, tok):
    choice_tasks = [t for t in tasks if t.kind != "language_modeling"]
    uniform = Uniform(tok.vocab_size)
    sequences = eval_core.build_sequences(choice_tasks, tok, SEQ_LEN)
    results = eval_core.score_sequences(uniform, sequences, tok.bos_id, 4096, 0, 1, CPU, NO_AUTOCAST, max_len=SEQ_LEN,
                                        progress=False)
    assert torch.allclose(results[:, 0], torch.full((len(sequences),), math.log(tok.vocab_size), dtype=torch.float64))
    chosen = eval_core.predictions(choice_tasks, sequences, results)
    assert chosen == [[0] * len(t.rows) for t in choice_tasks] == reference_predictions(uniform, choice_tasks, tok,
                                                                                         SEQ_LEN)
    (copa,) = [t for t in choice_tasks if t.label == "copa"]
    assert eval_core.accuracy(copa, chosen[choice_tasks.index(copa)]) == 0.5  # 6 of its 12 golds are 0


# -----------------------------------------------------------------------------
# Batches over processes


@pytest.mark.parametrize("batch_tokens", [256, 1000, 16_384])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_batches_hold_every_sequence_once_within_batch_tokens_and_balance_the_ranks(batch_tokens, world):
    rng = random.Random(batch_tokens + world)
    lengths = [rng.randint(2, 300) for _ in range(300)]
    sequences = [Sequence([0] * n, 1, n, 0, i, False) for i, n in enumerate(lengths)]
    per_rank = eval_core.make_batches(sequences, batch_tokens, world, max_len=320)
    assert len(per_rank) == world
    batches = [b for rank in per_rank for b in rank]
    assert sorted(i for batch, _ in batches for i in batch) == list(range(len(sequences)))
    for batch, width in batches:
        assert width == min(math.ceil(max(lengths[i] for i in batch) / 64) * 64, 320)  # 300 rounds to 320
        assert len(batch) * width <= batch_tokens or len(batch) == 1  # one prompt wider than the budget: alone
    loads = [sum(len(b) * w for b, w in rank) for rank in per_rank]
    assert max(loads) - min(loads) <= max(len(b) * w for b, w in batches)
    # the batches themselves do not depend on the world size: only who scores them does
    single = eval_core.make_batches(sequences, batch_tokens, 1, max_len=320)[0]
    assert sorted(map(lambda b: (b[1], sorted(b[0])), batches)) == sorted(map(lambda b: (b[1], sorted(b[0])), single))


# -----------------------------------------------------------------------------
# main: reports, BPB, 1 vs 2 processes


def test_main_writes_core_csv_and_results_core_keeping_the_training_results(run_copy, bundle, tasks, tok, reference,
                                                                         trained, cpu_only, capsys):
    training = json.loads((run_copy / "results.json").read_text())
    main(["--run-dir", str(run_copy), "--bundle", bundle])  # --bpb-tokens by default: the run's own val_tokens
    results = json.loads((run_copy / "results.json").read_text())
    assert {k: v for k, v in results.items() if k != "core"} == training
    report = results["core"]
    _, core, accuracies = reference
    assert report["core"] == pytest.approx(core, abs=1e-12)
    assert [(r["task"], r["type"], r["shots"], r["examples"]) for r in report["tasks"]] == \
        [(t.label, t.kind, t.shots, len(t.rows)) for t in tasks]
    assert [r["accuracy"] for r in report["tasks"]] == accuracies
    sequences = eval_core.build_sequences(tasks, tok, SEQ_LEN)
    assert report["truncation"] == ("prompts longer than the model's context (64 tokens) are cut from the left, "
                                    f"keeping the scored span: {sum(s.truncated for s in sequences)} of "
                                    f"{len(sequences)} prompts")
    assert 0 < report["core_time_s"] <= report["eval_time_s"] and report["world_size"] == 1
    assert report["bundle_zip_sha256"] is None and report["max_per_task"] is None  # --bundle: used as it is
    assert report["val_bpb"] == pytest.approx(training["val_bpb"], rel=1e-9)  # the same val tokens as training
    assert report["val_loss"] == pytest.approx(training["val_loss"], rel=1e-9)
    assert report["bpb_tokens"] == 2048 and len(report["samples"]) == 5
    assert report["samples"][0].startswith("The capital of France is")
    with open(run_copy / "core.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["task"] for row in table] == [t.label for t in tasks]
    assert [float(row["centered"]) for row in table] == pytest.approx([r["centered"] for r in report["tasks"]])
    assert sum(float(row["centered"]) for row in table) / 22 == pytest.approx(report["core"])
    assert f"CORE {report['core']:.4f}" in capsys.readouterr().out


def test_two_gloo_processes_give_the_one_process_results(trained, bundle, tmp_path, cpu_only):
    one, two = (Path(shutil.copytree(trained[0], tmp_path / name)) for name in ("one", "two"))
    flags = ["--bundle", bundle, "--bpb-tokens", "2048", "--no-samples", "--batch-tokens", "256"]
    main(["--run-dir", str(one), *flags])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "eval_core.py"), "--run-dir", str(two), *flags]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single, double = (json.loads((run / "results.json").read_text())["core"] for run in (one, two))
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert [(r["task"], r["accuracy"]) for r in double["tasks"]] == \
        [(r["task"], r["accuracy"]) for r in single["tasks"]]
    assert double["core"] == single["core"] and double["truncation"] == single["truncation"]
    assert double["val_bpb"] == pytest.approx(single["val_bpb"], rel=1e-6)
    assert (two / "core.csv").read_text() == (one / "core.csv").read_text()


def test_the_documented_torchrun_command_line_reaches_eval_core():
    from torch.distributed.run import get_args_parser
    (line,) = [line for line in eval_core.__doc__.splitlines() if line.strip().startswith("torchrun ")]
    args = get_args_parser().parse_args(shlex.split(line)[1:])  # as torchrun parses it
    assert args.training_script == "eval_core.py" and "runs/<run_id>" in args.training_script_args


def test_core_runs_from_any_working_directory_with_the_configs_relative_paths(trained, tokenizer_dir, shards, bundle,
                                                                             tmp_path):
    """A checkout whose run config names its tokenizer and val files relative to the checkout (as the presets do),
    evaluated from another folder: the paths are taken from the checkout, and the results are those of the run."""
    checkout = tmp_path / "checkout"
    (checkout / "data").mkdir(parents=True)
    (checkout / "harness").mkdir()
    for source in [*REPO.glob("*.py"), *(REPO / "data").glob("*.py"), *(REPO / "harness").glob("*.py")]:
        shutil.copy(source, checkout / source.relative_to(REPO))
    shutil.copytree(tokenizer_dir, checkout / "data" / "tokenizers" / "tok")
    (checkout / "data" / "tokens").mkdir()
    for shard in Path(shards).glob("val_*.bin"):
        shutil.copy(shard, checkout / "data" / "tokens" / shard.name)
    run = Path(shutil.copytree(trained[0], tmp_path / "run"))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"].update(tokenizer="data/tokenizers/tok", val_files="data/tokens/val_*.bin")
    torch.save(state, run / "checkpoint.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, str(checkout / "eval_core.py"), "--run-dir", str(run), "--bundle", bundle,
                           "--tasks", "copa,winograd", "--bpb-tokens", "2048", "--no-samples"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "results.json").read_text())["core"]
    assert report["val_bpb"] == pytest.approx(trained[1]["val_bpb"], rel=1e-6)  # the run's own val tokens
    assert [r["task"] for r in report["tasks"]] == ["copa", "winograd"] and math.isfinite(report["core"])
    assert list(elsewhere.iterdir()) == []


def test_max_per_task_cuts_every_task(run_copy, bundle, cpu_only):
    main(["--run-dir", str(run_copy), "--bundle", bundle, "--bpb-tokens", "0", "--no-samples", "--max-per-task", "11",
          "--tasks", "copa,jeopardy"])
    report = json.loads((run_copy / "results.json").read_text())["core"]
    assert [(r["task"], r["examples"]) for r in report["tasks"]] == [("jeopardy", 11), ("copa", 11)]
    assert report["max_per_task"] == 11 and report["val_bpb"] is None and report["samples"] == []


# -----------------------------------------------------------------------------
# The model code a run was trained with: the train_gpt.py source at the top of its log.txt

END_OF_SOURCE = "\n" + "=" * 100 + "\n"
# Another branch's train_gpt.py, made of this one's whatever its model: code appended to the source that gives the
# blocks another function of the same weights, or a weight more in every block's MLP
OTHER_FUNCTION = ("\n\n_block_forward = Block.forward\n\n\n"
                  "def _block_forward_of_another_branch(self, x, *args):\n"
                  "    return _block_forward(self, torch.tanh(x), *args)\n\n\n"
                  "Block.forward = _block_forward_of_another_branch\n")
ADDED_WEIGHT = ("\n\n_block_init = Block.__init__\n\n\n"
                "def _block_init_of_another_branch(self, dim, *args, **kwargs):\n"
                "    _block_init(self, dim, *args, **kwargs)\n"
                "    self.mlp.other_branch = nn.Linear(dim, 4 * dim, bias=False)\n\n\n"
                "Block.__init__ = _block_init_of_another_branch\n")
OTHER_BRANCH = {"commit": "abc123def4567890abc123def4567890abc12345", "dirty": True, "diff_sha256": "0" * 64}


def rewrite_log(run, edit=None, git=OTHER_BRANCH):
    """The run's log.txt with edit(source) at its top (edit None: no source at all) and git as its git line."""
    source, found, rest = (run / "log.txt").read_text().partition(END_OF_SOURCE)
    assert found and source == (REPO / "train_gpt.py").read_text()  # what training wrote: this checkout's
    rest = f"git: {json.dumps(git)}\n" + rest.split("\n", 1)[1]
    (run / "log.txt").write_text(rest if edit is None else edit(source) + END_OF_SOURCE + rest)


def add_weight(run, name="blocks.0.mlp.other_branch.weight"):
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["model"][name] = torch.zeros(128, 32)
    torch.save(checkpoint, run / "checkpoint.pt")


def model_built_by_hand(source, run, tok, tmp_path):
    """The run's model from `source` imported as a module of the test's own, without eval_core."""
    (tmp_path / "by_hand.py").write_text(source)
    spec = importlib.util.spec_from_file_location("by_hand", tmp_path / "by_hand.py")
    module = sys.modules["by_hand"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    saved = dict(checkpoint["config"], adam_betas=tuple(checkpoint["config"]["adam_betas"]))
    model = module.GPT(module.Config(**saved), tok.vocab_size, tok.bos_id)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def losses_and_exact(model, tasks, tok):
    sequences = eval_core.build_sequences(tasks, tok, SEQ_LEN)
    return eval_core.score_sequences(model, sequences, tok.bos_id, 1024, 0, 1, CPU, NO_AUTOCAST, SEQ_LEN,
                                     progress=False)


def test_a_run_whose_logged_source_is_this_checkouts_is_built_with_train_gpt_without_a_word(trained, capsys):
    source = (trained[0] / "log.txt").read_text().partition(END_OF_SOURCE)[0]
    assert source == (REPO / "train_gpt.py").read_text()
    model, config, _ = eval_core.load_run(str(trained[0]), CPU)
    assert type(model).__module__ == type(config).__module__ == "train_gpt"
    assert capsys.readouterr().out == ""


def test_a_run_trained_with_another_model_function_is_scored_with_its_own_train_gpt(run_copy, bundle, tasks, tok,
                                                                                  model, cpu_only, capsys, tmp_path):
    rewrite_log(run_copy, lambda source: source + OTHER_FUNCTION)
    source = (run_copy / "log.txt").read_text().partition(END_OF_SOURCE)[0]
    assert source.endswith(OTHER_FUNCTION)
    theirs = model_built_by_hand(source, run_copy, tok, tmp_path)
    evaluated, _, _ = eval_core.load_run(str(run_copy), CPU)
    line = len((REPO / "train_gpt.py").read_text().splitlines()) + 1  # the first line appended
    assert capsys.readouterr().out == ("scoring with the run's own train_gpt.py (it differs from this checkout's: the "
                                       f"run's is at commit abc123def456 (dirty), first difference at line {line})\n")
    assert type(evaluated).__module__ == "train_gpt_of_run" and evaluated.windows == theirs.windows
    some = [t for t in tasks if t.label in ("copa", "winograd")]
    assert torch.equal(losses_and_exact(evaluated, some, tok), losses_and_exact(theirs, some, tok))
    assert not torch.allclose(losses_and_exact(evaluated, some, tok), losses_and_exact(model, some, tok))
    main(["--run-dir", str(run_copy), "--bundle", bundle, "--tasks", "copa,winograd", "--bpb-tokens", "0",
          "--no-samples"])
    sequences = eval_core.build_sequences(some, tok, SEQ_LEN)
    chosen = eval_core.predictions(some, sequences, losses_and_exact(theirs, some, tok))
    core, _ = eval_core.core_score(some, [eval_core.accuracy(t, c) for t, c in zip(some, chosen)])
    assert json.loads((run_copy / "results.json").read_text())["core"]["core"] == core


@pytest.mark.parametrize("case", ["unimportable, with an added parameter", "an added parameter the weights lack"])
def test_a_run_whose_own_train_gpt_does_not_load_here_is_refused_in_one_line_naming_its_commit(run_copy, bundle,
                                                                                              cpu_only, case):
    if case.startswith("unimportable"):
        add_weight(run_copy)  # trained with the gate; its code needs a module this checkout lacks
        rewrite_log(run_copy, lambda s: "import module_of_another_branch\n" + s + ADDED_WEIGHT)
        why = "ModuleNotFoundError: No module named 'module_of_another_branch'"
    else:
        rewrite_log(run_copy, lambda s: s + ADDED_WEIGHT)
        why = "missing key blocks.0.mlp.other_branch.weight and 1 more"
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(run_copy), "--bundle", bundle, "--bpb-tokens", "0", "--no-samples"])
    assert exc.value.code == (f"error: {run_copy} was trained with train_gpt.py at commit abc123def456 (dirty) whose "
                              f"model does not load here ({why}); check out that commit (git checkout abc123def456), "
                              f"apply its changes (git apply {run_copy / 'git.diff'}) and evaluate again")
    assert not (run_copy / "core.csv").exists()


def test_the_refusal_is_one_line_on_stderr_without_a_traceback(run_copy, bundle):
    add_weight(run_copy)
    rewrite_log(run_copy, lambda s: "import module_of_another_branch\n" + s, dict(OTHER_BRANCH, dirty=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(REPO / "eval_core.py"), "--run-dir", str(run_copy), "--bundle", bundle],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == (f"error: {run_copy} was trained with train_gpt.py at commit abc123def456 whose model does "
                           "not load here (ModuleNotFoundError: No module named 'module_of_another_branch'); check out "
                           "that commit (git checkout abc123def456) and evaluate again\n")


@pytest.mark.parametrize("change, why", [
    ("weight", "unexpected key blocks.0.mlp.other_branch.weight"),
    ("width", "shape mismatch embed.weight (512, 32) saved, (512, 64) here and {more} more")])
def test_weights_that_do_not_fit_this_checkouts_model_are_refused_in_one_line(run_copy, bundle, cpu_only, change,
                                                                            why):
    if change == "weight":
        add_weight(run_copy)
    else:
        import train_gpt
        checkpoint = torch.load(run_copy / "checkpoint.pt", weights_only=True)
        checkpoint["config"]["model_dim"] = 64
        torch.save(checkpoint, run_copy / "checkpoint.pt")
        wider = train_gpt.GPT(train_gpt.Config(**dict(checkpoint["config"], adam_betas=(0.8, 0.95))), 512).state_dict()
        changed = [name for name, saved in checkpoint["model"].items() if wider[name].shape != saved.shape]
        why = why.format(more=len(changed) - 1)  # every weight whose shape follows the width, but the one named
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(run_copy), "--bundle", bundle, "--bpb-tokens", "0", "--no-samples"])
    assert exc.value.code == (f"error: {run_copy / 'checkpoint.pt'} does not load into the model of train_gpt.py "
                              f"({why}), though this checkout's train_gpt.py is the one {run_copy} logged: the "
                              "checkpoint is not that run's")


@pytest.mark.parametrize("log", ["without source", "missing"])
def test_a_run_whose_log_has_no_source_is_scored_with_this_checkouts_code_with_a_notice(run_copy, tasks, tok, model,
                                                                                        capsys, log):
    if log == "missing":
        (run_copy / "log.txt").unlink()
        why = f"{run_copy} has no log.txt"
    else:
        rewrite_log(run_copy, None)
        why = f"{run_copy / 'log.txt'} holds no train_gpt.py source (no line of 100 '=')"
    evaluated, _, _ = eval_core.load_run(str(run_copy), CPU)
    assert capsys.readouterr().out == (f"{why}: scoring with this checkout's train_gpt.py, whose model loads the "
                                       "checkpoint; the model code could not be checked against the run's\n")
    some = [t for t in tasks if t.label == "copa"]
    assert torch.equal(losses_and_exact(evaluated, some, tok), losses_and_exact(model, some, tok))


def test_a_run_whose_log_has_no_source_and_whose_weights_do_not_fit_is_refused(run_copy):
    rewrite_log(run_copy, None)
    add_weight(run_copy)
    with pytest.raises(EvalError) as exc:
        eval_core.load_run(str(run_copy), CPU)
    assert str(exc.value) == (f"{run_copy / 'checkpoint.pt'} does not load into this checkout's model (unexpected key "
                              f"blocks.0.mlp.other_branch.weight), and {run_copy / 'log.txt'} holds no train_gpt.py source (no "
                              "line of 100 '='): evaluate it in a checkout of the code it was trained with")


@pytest.mark.parametrize("top", ["no end line", "a longer source"])
def test_a_log_whose_source_part_passes_one_megabyte_is_refused_after_a_bounded_read(run_copy, top):
    junk = "#" * 99 + "\n"
    log = junk * 12_000 + (END_OF_SOURCE.lstrip("\n") if top == "a longer source" else "") + "git: {}\n"
    (run_copy / "log.txt").write_text(log)
    with pytest.raises(EvalError) as exc:
        eval_core.load_run(str(run_copy), CPU)
    assert str(exc.value) == (f"{run_copy / 'log.txt'}: no end of the train_gpt.py source (a line of 100 '=') in its "
                              "first 1,048,576 bytes; this is not a log that train_gpt.py wrote")


# -----------------------------------------------------------------------------
# The bundle download


class BundleServer:
    """Serves a body at /eval_bundle.zip on 127.0.0.1 (any other path: 404), optionally slowly; counts requests."""

    def __init__(self, body, delay=0.0):
        self.body, self.delay, self.requests = body, delay, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                time.sleep(server.delay)
                if self.path != "/eval_bundle.zip":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/eval_bundle.zip"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zip")
    path = make_zip(folder)
    return Path(path).read_bytes(), Path(folder, "eval_bundle")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_the_fixture_zip_is_laid_out_like_the_real_bundle_and_deterministic(bundle_zip, tmp_path):
    data, _ = bundle_zip
    names = zipfile.ZipFile(Path(make_zip(tmp_path))).namelist()
    assert all(name.startswith("eval_bundle/") for name in names)
    assert {"eval_bundle/core.yaml", "eval_bundle/eval_meta_data.csv",
            "eval_bundle/eval_data/world_knowledge/jeopardy_all.jsonl"} <= set(names)
    assert sum(name.endswith(".jsonl") for name in names) == 21  # the two hellaswags share a file
    assert (tmp_path / "eval_bundle.zip").read_bytes() == data


def test_the_bundle_is_downloaded_unpacked_and_recorded_once(bundle_zip, tmp_path, capsys):
    data, source = bundle_zip
    with BundleServer(data) as server:
        folder, zip_sha = eval_core.fetch_bundle(str(tmp_path / "cache"), server.url)
        assert server.requests == ["/eval_bundle.zip"] and "downloading the eval bundle" in capsys.readouterr().out
        assert folder == str(tmp_path / "cache" / "eval_bundle") and zip_sha == sha256(data)
        manifest = json.loads((tmp_path / "cache" / "eval_bundle.sha256.json").read_text())
        expected = {f"eval_bundle/{p.relative_to(source)}": sha256(p.read_bytes())
                    for p in source.rglob("*") if p.is_file()}
        assert manifest == {"zip_sha256": sha256(data), "files": expected} and len(expected) == 23
        assert [t.label for t in eval_core.load_tasks(folder)] == [row[0] for row in CORE_TASKS]
        again = eval_core.fetch_bundle(str(tmp_path / "cache"), server.url)
        assert again == (folder, zip_sha) and len(server.requests) == 1  # checked, not fetched again
        assert "downloading" not in capsys.readouterr().out


@pytest.mark.parametrize("change", ["edit", "remove", "add"])
def test_a_bundle_file_changed_after_unpacking_is_refused_naming_it(bundle_zip, tmp_path, change):
    data, _ = bundle_zip
    with BundleServer(data) as server:
        eval_core.fetch_bundle(str(tmp_path), server.url)
    path = tmp_path / "eval_bundle" / "eval_data" / "commonsense_reasoning" / "copa.jsonl"
    if change == "edit":
        path.write_text(path.read_text().replace('"gold": 0', '"gold": 1', 1))
    elif change == "remove":
        path.unlink()
    else:
        path = path.with_name("extra.jsonl")
        path.write_text("{}\n")
    with pytest.raises(EvalError, match=re.escape(f"eval_bundle/eval_data/commonsense_reasoning/{path.name}")) as e:
        eval_core.fetch_bundle(str(tmp_path), "http://127.0.0.1:9/unused")
    assert "changed since it was unpacked" in str(e.value) and "delete eval_bundle/" in str(e.value)


def test_one_edited_file_is_reported_alone(bundle_zip, tmp_path):
    data, _ = bundle_zip
    with BundleServer(data) as server:
        eval_core.fetch_bundle(str(tmp_path), server.url)
    path = tmp_path / "eval_bundle" / "core.yaml"
    path.write_text(path.read_text() + "\n")
    with pytest.raises(EvalError) as e:
        eval_core.fetch_bundle(str(tmp_path), "http://127.0.0.1:9/unused")
    assert "eval_bundle/core.yaml" in str(e.value) and "and more" not in str(e.value)


@pytest.mark.parametrize("spoil", [lambda data: b"<html>not found</html>", lambda data: data[:len(data) // 2]])
def test_a_download_that_is_not_a_zip_is_removed_with_a_clear_error_and_fetched_again(bundle_zip, tmp_path, spoil):
    data, _ = bundle_zip
    with BundleServer(spoil(data)) as server:
        with pytest.raises(EvalError, match=r"eval_bundle.zip: not a valid zip \(.*; removed\); run again"):
            eval_core.fetch_bundle(str(tmp_path), server.url)
        assert not (tmp_path / "eval_bundle.zip").exists() and not (tmp_path / "eval_bundle.sha256.json").exists()
        server.body = data
        folder, zip_sha = eval_core.fetch_bundle(str(tmp_path), server.url)
        assert zip_sha == sha256(data) and len(server.requests) == 2


def test_a_zip_with_damaged_compressed_data_gives_a_clear_error(bundle_zip, tmp_path):
    data, _ = bundle_zip
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("eval_bundle/core.yaml")
    header = info.header_offset
    name_len, extra_len = int.from_bytes(data[header + 26:header + 28], "little"), \
        int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_len + extra_len  # the member's deflate stream: 0xFF is an invalid block type
    damaged = data[:start] + b"\xff" + data[start + 1:]
    with BundleServer(damaged) as server:
        with pytest.raises(EvalError, match="not a valid zip"):
            eval_core.fetch_bundle(str(tmp_path), server.url)


def test_a_failed_download_is_a_clear_error(tmp_path):
    with BundleServer(b"") as server:
        with pytest.raises(EvalError, match=r"could not download the eval bundle from .*/missing.zip \(HTTP Error "
                                            r"404.*put eval_bundle.zip in .* by hand"):
            eval_core.fetch_bundle(str(tmp_path), server.url.replace("eval_bundle.zip", "missing.zip"))
    assert not (tmp_path / "eval_bundle.zip").exists()


def test_concurrent_calls_download_once(bundle_zip, tmp_path):
    data, _ = bundle_zip
    outcomes = []
    with BundleServer(data, delay=0.3) as server:
        threads = [threading.Thread(target=lambda: outcomes.append(eval_core.fetch_bundle(str(tmp_path), server.url)))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(server.requests) == 1
    assert outcomes == [(str(tmp_path / "eval_bundle"), sha256(data))] * 4


# -----------------------------------------------------------------------------
# Bad input: one line that says what to do


def test_a_run_without_a_checkpoint_is_a_one_line_error(bundle, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(tmp_path / "run"), "--bundle", bundle])
    message = str(exc.value.code)
    assert message.startswith(f"error: {tmp_path / 'run' / 'checkpoint.pt'}: no checkpoint; train with train_gpt.py")
    assert "\n" not in message


def test_max_per_task_zero_is_a_usage_error(bundle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(tmp_path), "--bundle", bundle, "--max-per-task", "0"])
    assert exc.value.code == 2 and "--max-per-task must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("bpb_tokens, says", [
    ("1000000", "--bpb-tokens=1,000,000 needs 1,000,001 val tokens (whole rows of the run's seq_len 64, +1), and the "
                "val shards {val} hold {held:,}: pass --bpb-tokens={most} or less (0 skips bits per byte)"),
    ("10", "--bpb-tokens=10 is less than one row of the run's seq_len 64: pass --bpb-tokens=64 or more, or 0 to skip "
           "bits per byte")])
def test_bpb_tokens_beyond_the_val_shards_fail_before_any_scoring_naming_the_option(run_copy, bundle, cpu_only,
                                                                                    monkeypatch, bpb_tokens, says):
    import train_gpt
    monkeypatch.setattr(eval_core, "load_tasks", lambda *a: pytest.fail("the bundle was read before the check"))
    before = (run_copy / "results.json").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(run_copy), "--bundle", bundle, "--bpb-tokens", bpb_tokens])
    val = train_gpt.Config(**{**torch.load(run_copy / "checkpoint.pt", weights_only=True)["config"]}).val_files
    from data.shards import read_header
    from harness.data import find_files
    held = sum(read_header(path) for path in find_files(val, "validation"))
    assert exc.value.code == "error: " + says.format(val=val, held=held, most=(held - 1) // 64 * 64)
    assert (run_copy / "results.json").read_text() == before and not (run_copy / "core.csv").exists()


def test_running_out_of_gpu_memory_names_the_batch_option_and_keeps_the_results(run_copy, bundle, cpu_only,
                                                                               monkeypatch):
    def out_of_memory(*args, **kwargs):  # what the CUDA allocator raises in a forward pass
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.")
    monkeypatch.setattr(eval_core, "score_sequences", out_of_memory)
    before = (run_copy / "results.json").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(run_copy), "--bundle", bundle, "--batch-tokens", "4096"])
    assert exc.value.code == ("error: out of GPU memory at --batch-tokens=4096: lower it (e.g. --batch-tokens=2048): "
                              "it sets only how many sequences share a forward pass")
    assert (run_copy / "results.json").read_text() == before and not (run_copy / "core.csv").exists()


def test_an_unknown_task_label_is_an_error(run_copy, bundle, cpu_only):
    with pytest.raises(SystemExit) as exc:
        main(["--run-dir", str(run_copy), "--bundle", bundle, "--tasks", "copa,hellaswag_10shot"])
    assert exc.value.code == "error: unknown task(s): ['hellaswag_10shot']"
    assert not (run_copy / "core.csv").exists()


def test_max_per_task_smaller_than_the_shots_is_a_one_line_error_or_works(run_copy, bundle, cpu_only):
    try:
        main(["--run-dir", str(run_copy), "--bundle", bundle, "--bpb-tokens", "0", "--no-samples", "--max-per-task", "10",
              "--tasks", "jeopardy"])
    except SystemExit as exc:
        assert str(exc.code).startswith("error: ") and "\n" not in str(exc.code)


def test_a_model_whose_context_is_not_a_multiple_of_64_is_scored(tasks, tok, trained):
    import train_gpt
    config = train_gpt.Config(depth=2, model_dim=32, head_dim=16, seq_len=100, short_window=16)
    torch.manual_seed(0)
    model = train_gpt.GPT(config, tok.vocab_size).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    some = [t for t in tasks if t.label in ("copa", "coqa")]
    sequences = eval_core.build_sequences(some, tok, 100)
    assert max(len(s.tokens) for s in sequences) == 100
    results = eval_core.score_sequences(model, sequences, tok.bos_id, 4096, 0, 1, CPU, NO_AUTOCAST, max_len=100,
                                        progress=False)
    assert eval_core.predictions(some, sequences, results) == reference_predictions(model, some, tok, 100)


def test_a_zip_without_an_eval_bundle_folder_is_refused(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("something_else/core.yaml", "icl_tasks: []\n")
    with BundleServer(archive.getvalue()) as server:
        with pytest.raises(EvalError, match="no eval_bundle/core.yaml inside"):
            eval_core.fetch_bundle(str(tmp_path), server.url)
    assert not (tmp_path / "eval_bundle.zip").exists() and not (tmp_path / "eval_bundle").exists()


def test_a_task_named_twice_is_evaluated_once(run_copy, bundle, cpu_only):
    main(["--run-dir", str(run_copy), "--bundle", bundle, "--bpb-tokens", "0", "--no-samples", "--tasks", "copa,copa"])
    report = json.loads((run_copy / "results.json").read_text())["core"]
    assert [r["task"] for r in report["tasks"]] == ["copa"]
