"""Ideas of the record-holders, each written as a speedrunner writes it: a small diff to train_gpt.py alone (a copy in
a temporary folder, its text replaced), trained through the unchanged harness. The harness gives any recipe what they
need (harness/optim.py): update rules that see their matrices (cautious weight decay), state of any shape (a per-row
second moment), a rule that steps every k-th step, auxiliary losses that the FLOPs count sees, and a change of the
model's parameters at a step (untying the head). Each is held to the invariants: the same math on 1, 2 and 4
processes, an exact resume, every parameter in one update rule."""

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import loop
from harness.config import parse_args
from tests.test_train import log_lines, options, shards  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
_names = itertools.count()


def idea(tmp_path, *edits):
    """train_gpt.py with each (old, new) edit applied (each old text must be there), written to tmp_path and loaded as
    a module of its own: the recipe an idea is."""
    source = (REPO / "train_gpt.py").read_text()
    for old, new in edits:
        assert source.count(old) == 1, f"the edit's text is not in train_gpt.py once: {old[:60]!r}"
        source = source.replace(old, new)
    path = tmp_path / f"train_idea_{next(_names)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(recipe, options, **changes):
    """A whole run of the recipe in this process: (results, {step: train loss})."""
    config = parse_args(recipe.Config, recipe.PRESETS, [f"--{k}={v}" for k, v in {**options, **changes}.items()])
    results = loop.train(recipe, config)
    lines = log_lines(Path(config.out_dir) / config.run_id / "log.txt")
    return results, {int(l["step"].split("/")[0]): float(l["train_loss"]) for l in lines if "train_loss" in l}


def compiles_by_step(monkeypatch):
    """From here on, torch.compile with the aot_eager backend (Dynamo's tracing and guards as on a GPU, without
    Inductor's code generation); returns the list that each Trainer.step call then appends (graphs compiled before
    it, after it) to."""
    from torch._dynamo.testing import CompileCounterWithBackend
    graphs, real_compile = CompileCounterWithBackend("aot_eager"), torch.compile
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: real_compile(*args, **{**kwargs, "backend": graphs}))
    calls, step = [], loop.Trainer.step

    def counted(self, *args):
        before = graphs.frame_count
        out = step(self, *args)
        calls.append((before, graphs.frame_count))
        return out
    monkeypatch.setattr(loop.Trainer, "step", counted)
    torch._dynamo.reset()
    return calls


def train_processes(recipe, options, world, **changes):
    """The recipe under torchrun on `world` gloo processes: {step: train loss}."""
    args = [f"--{k}={v}" for k, v in {**options, **changes}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                           recipe.__file__, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = {**options, **changes}
    lines = log_lines(Path(config["out_dir"]) / config["run_id"] / "log.txt")
    return {int(l["step"].split("/")[0]): float(l["train_loss"]) for l in lines if "train_loss" in l}


# -----------------------------------------------------------------------------
# Update rules that see their matrices, keep state of any shape, and step every k-th step

NORMUON_CAUTIOUS = (
    ('''def muon(grads, state, hp):
    """Muon on a stack [count, rows, cols]: Nesterov momentum, orthogonalized; the harness applies lr x this."""
    nesterov = nesterov_momentum(grads, state, hp.momentum)
    iterate = newton_schulz if hp.config.orthogonalizer == "newton_schulz" else polar_express
    return orthogonalize(nesterov, hp.config.ns_steps, hp.compiled(iterate))''',
     '''def muon(grads, state, hp, params):
    """Muon, then a per-row second moment (NorMuon) and cautious weight decay (where update and weight agree)."""
    momentum = state.setdefault("momentum", torch.zeros_like(grads))
    momentum.lerp_(grads, 1 - hp.momentum)
    nesterov = grads.lerp_(momentum, hp.momentum)  # in place: the gradient is not needed after
    direction = orthogonalize(nesterov, hp.config.ns_steps, hp.compiled(newton_schulz)).float()
    rows = state.setdefault("row_moment", torch.zeros(direction.shape[:2], device=direction.device))
    rows.lerp_(direction.square().mean(-1), 0.05)
    direction = direction / (rows.sqrt()[..., None] + 1.0)  # rows that move more move less
    cautious = (direction * params > 0).float()
    return direction + 0.5 / hp.lr_scale * params * cautious'''),
    ('''    "muon": UpdateRule(muon, shards="matrices", lr_scale=tall_lr_scale),''',
     '''    "muon": UpdateRule(muon, shards="matrices", lr_scale=tall_lr_scale, sees_params=True),'''),
    ('''    "adamw": UpdateRule(adamw, shards="elements"),''',
     '''    "adamw": UpdateRule(adamw, shards="elements", every=2),  # modded-nanogpt's Adam on odd steps'''),
)


def test_rules_that_see_their_matrices_keep_per_row_state_and_step_every_other_step(options, tmp_path):
    """NorMuon's per-row moment [count, rows], cautious weight decay and AdamW on odd steps, a diff to train_gpt.py
    alone: trains; its state is saved by parameter name (the per-row moment as each matrix's rows); 1, 2 and 4
    processes give the same losses; a resume between two AdamW updates (the pending gradients checkpointed) is
    exact."""
    recipe = idea(tmp_path, *NORMUON_CAUTIOUS)
    options = dict(options, total_batch_tokens=512, steps=6, muon_split_qkv="true")
    whole, losses = train(recipe, options, run_id="whole")
    assert whole["steps"] == 6 and all(loss == loss for loss in losses.values())
    plain = idea(tmp_path)
    _, plain_losses = train(plain, options, run_id="plain")
    assert losses[1] == plain_losses[1] and losses[6] != plain_losses[6]  # the rules changed the math
    saved = torch.load(tmp_path / "runs" / "whole" / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    qkv = saved["blocks.0.attn.qkv.weight"]
    assert qkv["row_moment"].shape == (3, 32) and qkv["momentum"].shape == (96, 32)  # q, k, v: 3 parts of 32 rows
    assert saved["embed.weight"]["engine.pending_grad"].abs().sum() == 0  # 6 steps: the last one updated
    # resumed at step 3: AdamW updated at steps 2 (1-based), step 3's gradient pending in the checkpoint
    train(recipe, options, run_id="cut", stop_after=3)
    pending = torch.load(tmp_path / "runs" / "cut" / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert pending["embed.weight"]["engine.pending_grad"].abs().sum() > 0
    resumed, resumed_losses = train(recipe, options, run_id="cut",
                                    resume=str(tmp_path / "runs" / "cut" / "checkpoint.pt"))
    assert resumed_losses == losses and resumed["val_loss"] == whole["val_loss"]
    for world in (2, 4):  # rows dealt round-robin, sums in another order: float rounding only
        on_many = train_processes(recipe, options, world, run_id=f"world{world}")
        assert on_many == pytest.approx(losses, rel=2e-4), world


# -----------------------------------------------------------------------------
# An auxiliary loss: an extra head predicting token t+2, counted by the FLOPs count

SECOND_HEAD = (
    ('''        self.head = Linear(dim, padded_vocab, normed_input=True, mean_loss_head=True)  # untied from the embedding''',
     '''        self.head = Linear(dim, padded_vocab, normed_input=True, mean_loss_head=True)  # untied from the embedding
        self.head2 = Linear(dim, padded_vocab, normed_input=True)  # predicts token t+2'''),
    ('''        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(targets)''',
     '''        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        if self.training and reduction == "mean":  # the auxiliary loss trains; evaluation scores the next token
            after = torch.cat([targets[:, 1:], torch.full_like(targets[:, :1], -1)], dim=1)  # t+2; none at the end
            logits2 = self.head2(x)[..., :self.vocab_size].float()
            loss = loss + 0.3 * F.cross_entropy(logits2.view(-1, logits2.size(-1)), after.reshape(-1), ignore_index=-1)
        return loss if reduction == "mean" else loss.view_as(targets)'''),
    ('''        Rule(r"head\\.weight", "adamw", **adam["head"], counts=True),''',
     '''        Rule(r"head2?\\.weight", "adamw", **adam["head"], counts=True),'''),
)


def test_an_auxiliary_head_trains_and_its_flops_are_counted(options, tmp_path):
    """Multi-token prediction as a diff: the count (and so the log, results.json and the records' count) includes the
    second head's forward and backward, 6 x its parameters per token, with no formula edited."""
    recipe, plain = idea(tmp_path, *SECOND_HEAD), idea(tmp_path)
    results, losses = train(recipe, options, run_id="mtp")
    plain_results, plain_losses = train(plain, options, run_id="plain")
    head2 = results["params"] - plain_results["params"]
    assert head2 > 0 and results["model_flops_per_token"] == plain_results["model_flops_per_token"] + 6 * head2
    assert results["model_flops"] == results["model_flops_per_token"] * results["tokens"]
    assert losses[1] > plain_losses[1]  # the training loss holds the auxiliary term


# -----------------------------------------------------------------------------
# Parameter surgery: the head tied to the embedding, untied at 2/3 of the run, its state carried

UNTIE_AT_TWO_THIRDS = (
    ('''        if config.embed_dtype == "bf16":  # initialized in fp32 first, so that both dtypes start from the same draw''',
     '''        self.head.weight = self.embed.weight  # tied until model_surgery unties them
        if config.embed_dtype == "bf16":  # initialized in fp32 first, so that both dtypes start from the same draw'''),
    ('''# -----------------------------------------------------------------------------
# Update rules (harness/optim.py says what each kind is given and returns)''',
     '''def model_surgery(model, step, config, num_steps):
    """Unties the head from the embedding at 2/3 of the run; the head's AdamW state starts as the embedding's."""
    if step != 2 * num_steps // 3 or model.head.weight is not model.embed.weight:
        return None
    model.head.weight = nn.Parameter(model.embed.weight.detach().clone())
    return {"head.weight": "embed.weight"}


# -----------------------------------------------------------------------------
# Update rules (harness/optim.py says what each kind is given and returns)'''),
)


def test_a_head_untied_at_two_thirds_of_the_run_carries_its_state_and_resumes_exactly(options, tmp_path):
    """Tied head, untied before step 5 of 6 with the embedding's AdamW state: the run logs the change; a checkpoint
    from before the change and one from after it both resume to the uninterrupted run's losses and final val loss
    (on a resume the surgery is replayed before the weights are loaded); 2 processes agree."""
    recipe = idea(tmp_path, *UNTIE_AT_TWO_THIRDS)
    whole, losses = train(recipe, options, run_id="whole")
    log = (tmp_path / "runs" / "whole" / "log.txt").read_text()
    assert "model_surgery: before step 5: head.weight (state from embed.weight)" in log
    saved = torch.load(tmp_path / "runs" / "whole" / "checkpoint.pt", weights_only=True)
    assert {"head.weight", "embed.weight"} <= saved["model"].keys() and not torch.equal(
        saved["model"]["head.weight"], saved["model"]["embed.weight"])  # untied: they moved apart
    assert saved["optimizer"]["state"]["head.weight"]["exp_avg"].shape == saved["model"]["head.weight"].shape
    for cut in (3, 5):  # before the change, and after it
        train(recipe, options, run_id=f"cut{cut}", stop_after=cut)
        resumed, resumed_losses = train(recipe, options, run_id=f"cut{cut}",
                                        resume=str(tmp_path / "runs" / f"cut{cut}" / "checkpoint.pt"))
        assert resumed_losses == losses and resumed["val_loss"] == whole["val_loss"], cut
    assert train_processes(recipe, options, 2, run_id="two") == pytest.approx(losses, rel=2e-4)


# -----------------------------------------------------------------------------
# A batch-size schedule: tokens per step grow during the run, the lr scaled with them

GROWING_BATCH = (
    ('''# -----------------------------------------------------------------------------
# Schedule
''', '''# -----------------------------------------------------------------------------
# Schedule


def batch_tokens(step, config):
    """Half the batch for the first 3 steps, then the whole (modded-nanogpt grows it in stages)."""
    return config.total_batch_tokens // 2 if step < 3 else config.total_batch_tokens
'''),
    ('''    multiplier = lr_multiplier(step, num_steps, config)''',
     '''    multiplier = lr_multiplier(step, num_steps, config) * (trainer.schedule(step) / config.total_batch_tokens) ** 0.5'''),
)


def test_a_batch_that_grows_during_the_run_is_counted_resumed_and_the_same_on_any_world_size(options, tmp_path):
    """512 then 1,024 tokens a step: the loader, accumulation and buckets follow (1, 2 and 4 processes agree), the
    step lines count the tokens so far, results.json and the model line hold 3 x 512 + 3 x 1,024, and a resume
    before or after the change is exact."""
    recipe = idea(tmp_path, *GROWING_BATCH)
    options = dict(options, total_batch_tokens=1024, steps=6)
    whole, losses = train(recipe, options, run_id="whole")
    assert whole["tokens"] == 4608 and whole["model_flops"] == whole["model_flops_per_token"] * 4608
    log = (tmp_path / "runs" / "whole" / "log.txt").read_text()
    assert "6 steps of 512 to 1,024 tokens, 4,608 in all" in log
    counts = [int(l.split(" tokens:")[1].split()[0]) for l in log.splitlines() if " train_loss:" in l]
    assert counts == [512, 1024, 1536, 2560, 3584, 4608]
    for cut in (2, 4):
        train(recipe, options, run_id=f"cut{cut}", stop_after=cut)
        resumed, resumed_losses = train(recipe, options, run_id=f"cut{cut}",
                                        resume=str(tmp_path / "runs" / f"cut{cut}" / "checkpoint.pt"))
        assert resumed_losses == losses and resumed["val_loss"] == whole["val_loss"] and resumed["tokens"] == 4608
    for world in (2, 4):
        assert train_processes(recipe, options, world, run_id=f"world{world}") == pytest.approx(losses, rel=2e-4)


def test_the_horizons_by_tokens_and_flops_sum_the_batch_schedule():
    import types
    from harness.schedule import BatchSchedule
    config = types.SimpleNamespace(total_batch_tokens=1000, device_batch=1, seq_len=10)
    growing = BatchSchedule(types.SimpleNamespace(batch_tokens=lambda step, c: 500 if step < 4 else 1000), config)
    assert growing.total(6) == 4000 and growing.values(6) == [500, 1000]
    assert growing.steps_for_tokens(4000) == 6 and growing.steps_for_tokens(4999) == 6
    assert growing.steps_for_tokens(5000) == 7 and growing.steps_for_tokens(10) == 1
    assert growing.steps_within(4000 * 7, 7) == 6 and growing.steps_within(4000 * 7 - 1, 7) == 5
    constant = BatchSchedule(types.SimpleNamespace(), config)
    assert constant.steps_for_tokens(4999) == 4 and constant.steps_within(5e4, 10) == 5


def test_rows_that_start_at_bos_train_resume_exactly_and_agree_on_two_processes(options, tmp_path):
    """--rows=documents (the loader choice; the every-token slices stay the default), with the growing batch: the log
    says how many document tokens cropping dropped; a resume mid-run (the pool of documents in the checkpoint) gives
    the uninterrupted run's losses; 2 processes agree."""
    recipe = idea(tmp_path, *GROWING_BATCH)
    options = dict(options, total_batch_tokens=1024, steps=6, rows="documents")
    whole, losses = train(recipe, options, run_id="whole")
    log = (tmp_path / "runs" / "whole" / "log.txt").read_text()
    assert "rows start at BOS: documents packed best fit" in log and "document tokens dropped by cropping" in log
    train(recipe, options, run_id="cut", stop_after=4)
    resumed, resumed_losses = train(recipe, options, run_id="cut", resume=str(tmp_path / "runs" / "cut" / "checkpoint.pt"))
    assert resumed_losses == losses and resumed["val_loss"] == whole["val_loss"]
    assert train_processes(recipe, options, 2, run_id="two") == pytest.approx(losses, rel=2e-4)
    _, slices = train(recipe, dict(options, rows="slices"), run_id="slices")
    assert slices[1] != losses[1]  # other rows


# -----------------------------------------------------------------------------
# Stages: a sequence length and window that grow, compiled in the warm-up

GROWING_CONTEXT = (
    ('''# -----------------------------------------------------------------------------
# Schedule
''', '''# -----------------------------------------------------------------------------
# Schedule


def stage(step, config):
    """Rows of 32 tokens with short windows of 8 for the first 3 steps, then the whole context."""
    return {"seq_len": 32, "short_window": 8} if step < 3 else {"seq_len": config.seq_len, "short_window": 16}


def apply_stage(model, stage):
    """The stage's short windows on the model (the full ones span any row)."""
    full = max(model.windows)
    model.windows = [w if w == full else stage["short_window"] for w in model.windows]
    for block, window in zip(model.blocks, model.windows):
        block.attn.window = window
'''),
)


def stage_counts(recipe, options, stage):
    """An independent count of one stage's FLOPs per token: the recipe's model with the stage applied, traced."""
    from harness.trace import trace
    config = parse_args(recipe.Config, recipe.PRESETS, [f"--{k}={v}" for k, v in options.items()])
    with torch.device("meta"):
        model = recipe.GPT(config, 512, 0)
    recipe.apply_stage(model, stage)
    return trace(model, stage["seq_len"])[0]


def test_a_context_that_grows_in_stages_counts_each_stages_flops_resumes_and_compiles_in_the_warm_up(options, tmp_path,
                                                                                                     monkeypatch):
    """Rows of 32 then 64 tokens (documents cut to the stage's length), short windows of 8 then 16: the model FLOPs
    are each stage's tokens x its own count (an independent trace per stage), a resume before or after the change is
    exact, 2 processes agree, and a compiled run compiles both stages in the untimed warm-up and nothing in the timed
    steps (aot_eager: Dynamo's guards as on a GPU)."""
    recipe = idea(tmp_path, *GROWING_CONTEXT)
    options = dict(options, total_batch_tokens=1024, steps=6, rows="documents")
    whole, losses = train(recipe, options, run_id="whole")
    short, full = (stage_counts(recipe, options, recipe.stage(s, types_config(options))) for s in (0, 5))
    assert short < full and whole["tokens"] == 6 * 1024
    assert whole["model_flops"] == 3 * 1024 * short + 3 * 1024 * full
    from harness.dryrun import plan  # the dry run plans the same figures, without a GPU or data
    planned = plan(recipe, parse_args(recipe.Config, recipe.PRESETS, [f"--{k}={v}" for k, v in options.items()]),
                   vocab=512)
    assert (planned["tokens"], planned["model_flops"]) == (whole["tokens"], whole["model_flops"])
    log = (tmp_path / "runs" / "whole" / "log.txt").read_text()
    assert "compile: 0 graphs compiled in the warm-up (2 steps, 2 stages)" in log  # eager: the stages visited
    for cut in (2, 4):
        train(recipe, options, run_id=f"cut{cut}", stop_after=cut)
        resumed, resumed_losses = train(recipe, options, run_id=f"cut{cut}",
                                        resume=str(tmp_path / "runs" / f"cut{cut}" / "checkpoint.pt"))
        assert resumed_losses == losses and resumed["model_flops"] == whole["model_flops"], cut
    assert train_processes(recipe, options, 2, run_id="two") == pytest.approx(losses, rel=2e-4)
    calls = compiles_by_step(monkeypatch)
    _, compiled = train(recipe, options, run_id="compiled", compile="true")
    warm, timed = calls[:2], calls[2:]  # warmup_timing_steps 1, and the second stage's first step
    assert len(timed) == 6 and warm[0][1] > 0 and warm[1][1] > warm[1][0]  # each stage compiled in the warm-up
    assert all(after == before for before, after in timed), calls  # and nothing in the timed steps
    assert compiled == pytest.approx(losses, rel=1e-3)


def types_config(options):
    import types
    return types.SimpleNamespace(seq_len=options["seq_len"])


# -----------------------------------------------------------------------------
# Records of schedules


def record_of(recipe, options, tmp_path):
    """Three seeds of a recipe as a record on a budget track, made at a commit whose train_gpt.py is the recipe (a
    repository of its own): (record folder, tracks file, repository)."""
    import json
    from records.record import new_record
    from tests.test_records import checkout, commit_all, relabel, tracks_for
    repo = checkout(tmp_path / "repo", Path(recipe.__file__).read_text())
    commit = commit_all(repo, "the idea")
    options = dict(options, out_dir=str(tmp_path / "seeds"))
    dirs = []
    for seed in range(3):
        train(recipe, options, run_id=f"seed{seed}", seed=seed)
        relabel(tmp_path / "seeds" / f"seed{seed}", commit)
        dirs.append(str(tmp_path / "seeds" / f"seed{seed}"))
    tracks = tracks_for({"tokenizer_sha256": None, "val_bytes": None, "val_source_sha256": None})
    tracks["tracks"] = [dict(t, data={}, budget_flops=1e15) for t in tracks["tracks"] if t["id"] == "tiny-budget"]
    (tmp_path / "tracks.json").write_text(json.dumps(tracks))
    record = Path(new_record("tiny-budget", "idea", dirs, out=str(tmp_path / "record"),
                             tracks_file=str(tmp_path / "tracks.json"), author="A", repo=str(repo)))
    return record, tmp_path / "tracks.json", repo


@pytest.mark.parametrize("edits, changes", [(GROWING_BATCH, {}), (GROWING_CONTEXT, {"rows": "documents"})],
                         ids=["growing batch", "growing context"])
def test_a_record_of_a_schedule_validates_with_its_tokens_and_flops_counted_by_this_checkout(options, tmp_path, edits,
                                                                                          changes):
    """Three seeds of a schedule as a record: validate recounts the tokens with the recipe's own batch schedule and
    the model FLOPs stage by stage (in the FLOPs count's child, with this checkout's instrument), and checks every
    step line's tok/s against its window's tokens; a record claiming a constant batch's tokens, or every token at the
    full context's count, is refused."""
    from records.record import validate
    from tests.test_records import edit_json
    recipe = idea(tmp_path, *edits)
    record, tracks, repo = record_of(recipe, dict(options, total_batch_tokens=1024, steps=6, **changes), tmp_path)
    problems, _ = validate(str(record), str(tracks), repo=str(repo))
    assert problems == [], problems
    run = json.loads((record / "results.json").read_text())["runs"][0]
    wrong = dict(tokens=6 * 1024 if edits is GROWING_BATCH else run["tokens"],
                 model_flops=run["tokens"] * run["model_flops_per_token"] if edits is GROWING_CONTEXT else
                 6 * 1024 * run["model_flops_per_token"])
    edit_json(record, lambda d: [r.update(wrong) for r in d["runs"]])
    problems, _ = validate(str(record), str(tracks), repo=str(repo))
    assert any("counted here" in p and "each stage at its own count" in p for p in problems), problems
