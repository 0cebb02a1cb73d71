"""The shape of the code: train_gpt.py is the research surface a speedrunner reads in one sitting, and the harness
beside it never reaches back into it."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
HARNESS = sorted((REPO / "harness").glob("*.py"))


def long_functions(path, limit):
    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_train_gpt_reads_in_one_sitting():
    # 710: two baselines, each choice a switch (the every-token recipe, and nanochat's leaderboard recipe of
    # --preset=gpt2-core); the file is still a fraction of what it replaces (nanochat's model, optimizer and script:
    # about 1,650 lines)
    assert len((REPO / "train_gpt.py").read_text().splitlines()) <= 710
    assert long_functions(REPO / "train_gpt.py", 60) == []


def test_no_harness_function_is_over_80_lines():
    assert [f for path in HARNESS for f in long_functions(path, 80)] == []


def test_the_harness_never_imports_the_recipe_or_the_scripts_above_it():
    """A recipe is handed to the harness (harness.loop.main(recipe)); nothing in harness/ imports it, eval_core or
    records, so that an idea is a diff to train_gpt.py alone."""
    upward = {"train_gpt", "eval_core", "records", "bench", "speedups"}
    found = []
    for path in HARNESS:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in upward]
    assert found == []


def test_a_file_git_does_not_track_makes_the_run_dirty_and_is_in_its_diff():
    """An untracked module can shadow a tracked one (a speedups/ package beside speedups.py did): it is part of the
    run's difference from its commit."""
    import pytest
    from harness.runlog import git_info
    if git_info()[0]["commit"] is None:
        pytest.skip("not a git checkout")
    probe = REPO / "harness" / "untracked_probe_for_a_test.py"
    probe.write_text("SHADOW = True\n")
    try:
        git, diff = git_info()
    finally:
        probe.unlink()
    assert git["dirty"] is True and "+++ b/harness/untracked_probe_for_a_test.py" in diff and "+SHADOW = True" in diff
