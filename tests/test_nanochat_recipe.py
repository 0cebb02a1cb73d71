"""The gpt2-core recipe (nanochat's leaderboard recipe, each of its choices a Config switch) held to the invariants:
every parameter in one row of the table, the same math on 1, 2 and 4 processes, an exact resume with NorMuon's
per-row state saved by parameter name, FLOPs counted from the model with its new modules, and the math of its
pieces (NorMuon evens out the rows and keeps the norm, the schedules, the scaling of lr and weight decay). That the
math is nanochat's own is bench/parity.py's job, against a checkout of nanochat (bench/results.md)."""

import dataclasses
import math

import pytest
import torch

import harness.loop
import train_gpt
from harness.comm import Comm
from harness.optim import ShardedOptimizer, assign
from harness.schedule import BatchSchedule
from harness.trace import trace
from tests.helpers import config_of
from tests.test_ideas import compiles_by_step, idea, train, train_processes
from tests.test_train import options, shards  # noqa: F401  (fixtures)

SHAPE_KEYS = {"depth", "total_batch_tokens", "tokens_per_param", "device_batch"}
# the preset's recipe switches, without its shape and horizon (tiny rows: the short window's tile at 8)
SWITCHES = {**{k: v for k, v in train_gpt.PRESETS["gpt2-core"].items() if k not in SHAPE_KEYS}, "window_tile": 8}


def as_options(switches):
    return {k: (",".join(map(str, v)) if isinstance(v, tuple) else str(v).lower() if isinstance(v, bool) else v)
            for k, v in switches.items()}


@pytest.mark.baseline
def test_gpt2_core_counts_and_steps_are_nanochats_at_depth_24():
    """Depth 24, vocab 32,768: the counted parameters (block matrices and gates, head) are nanochat's scaling
    parameters, 729,810,624, and 8 tokens each make its 5,568 steps of 1,048,576 tokens; every parameter has a row."""
    config = config_of("--preset=gpt2-core")
    with torch.device("meta"):
        model = train_gpt.GPT(config, 32768)
    table = train_gpt.parameter_table(config, model)
    optimizer = ShardedOptimizer(model, table, train_gpt.UPDATE_RULES, config, Comm())
    assert optimizer.counted_params == 729_810_624
    steps = harness.loop.num_training_steps(config, optimizer.counted_params, 1.0, BatchSchedule(train_gpt, config))
    assert (steps, config.total_batch_tokens) == (5568, 1_048_576)
    assert model.windows[:4] == [513, 513, 513, 2048]  # FA3's (512, 0): 512 keys before the query and itself


def test_every_switch_is_a_parameter_of_its_own_row_and_off_by_default():
    """With the switches on, every new parameter (per-layer scalars, smear, backout, value gates) is in one row and
    gets the rule nanochat gives it; with them off the model has none of them."""
    config = config_of(*[f"--{k}={v}" for k, v in as_options(SWITCHES).items()], "--preset=tiny")
    model = train_gpt.GPT(config, 4096)
    table = train_gpt.parameter_table(config, model)
    assigned = {name: row for name, row in assign(model, table, train_gpt.UPDATE_RULES).values()}
    assert assigned["blocks.1.attn.value_gate.weight"].update == "normuon"  # a matrix of the blocks, as nanochat's
    assert assigned["smear_gate.weight"].lr == assigned["backout_lambda"].lr == 0.2  # fixed, not batch-scaled
    assert dict(assigned["x0_lambdas"].settings)["betas"] == (0.96, 0.95)
    plain = train_gpt.GPT(config_of("--preset=tiny"), 4096)
    names = {name for name, _ in plain.named_parameters()}
    assert not names & {"resid_lambdas", "x0_lambdas", "smear_gate.weight", "smear_lambda", "backout_lambda"}
    assert not any("value_gate" in name for name in names)


def test_the_flops_count_sees_the_gates():
    """trace counts the value gates' and the smear gate's matmuls like any other, 6 x their weights a token; the
    per-layer scalars and the backout are not matmuls and cost nothing."""
    config = config_of("--preset=tiny", "--depth=3", "--value_mix=gate", "--smear=true", "--layer_scalars=true",
                       "--backout=true")
    model = train_gpt.GPT(config, 4096, bos_id=0)
    plain_config = config_of("--preset=tiny", "--depth=3", "--value_mix=scalars")
    plain = train_gpt.GPT(plain_config, 4096, bos_id=0)
    value_gates = sum(p.numel() for name, p in model.named_parameters() if "value_gate" in name)
    assert value_gates == 2 * 12 * model.blocks[0].attn.heads and model.smear_gate.weight.numel() == 24
    T = config.seq_len  # the smear's gate runs on every position but the first
    assert trace(model, T)[0] - trace(plain, T)[0] == 6 * value_gates + 6 * 24 * (T - 1) // T


def test_normuon_evens_out_the_rows_and_keeps_the_norm():
    """After the first step (zero moment), every row of a tall or square matrix (every column of a wide one) has the
    same mean square, and the direction's Frobenius norm is what it was."""
    torch.manual_seed(0)
    for shape in [(3, 16, 8), (2, 8, 8), (2, 4, 12)]:
        g = torch.randn(shape) * torch.rand(shape[0], shape[1], 1) * 3
        evened = train_gpt.evened_out(g.clone(), {}, torch.tensor(0.9))
        along = -1 if shape[1] >= shape[2] else -2
        mean_square = evened.square().mean(dim=along)
        assert torch.allclose(mean_square, mean_square.mean(dim=-1, keepdim=True).expand_as(mean_square), rtol=1e-4)
        assert torch.allclose(evened.norm(dim=(-2, -1)), g.norm(dim=(-2, -1)), rtol=1e-5)


def test_cautious_weight_decay_decays_only_where_step_and_weight_agree():
    """NorMuon's whole step is lr x direction + lr x wd x weight, the decay (cautious) only where direction and
    weight have the same sign."""
    import types
    config = config_of("--preset=tiny", "--muon=normuon", "--muon_update_dtype=fp32", "--normuon_beta2=0.9")
    per_matrix = lambda value: torch.full((2, 1, 1), value, dtype=torch.float64)
    hp = types.SimpleNamespace(config=config, momentum=0.9, lr=per_matrix(0.1), weight_decay=per_matrix(0.0),
                               wd_multiplier=1.0, compiled=lambda fn: fn)
    torch.manual_seed(0)
    params, grads = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    step = lambda: train_gpt.normuon(grads.clone(), {}, hp, params)
    without_decay = step()
    direction = without_decay / 0.1
    hp.weight_decay = per_matrix(0.5)
    assert torch.allclose(step(), without_decay + 0.05 * params)
    hp.config = dataclasses.replace(config, cautious_wd=True)
    agree = (direction * params) >= 0
    assert 0 < agree.sum() < agree.numel()
    assert torch.allclose(step(), without_decay + 0.05 * params * agree)


def test_the_schedules_and_scalings():
    """Momentum up over its warm-up, flat, down to muon_momentum_end over the warm-down; weight decay a half cosine to
    0; lrs x sqrt(B / lr_batch_ref); Muon's decay x sqrt(B / B_ref) x P_ref / P (parameters counted at both depths)."""
    config = config_of("--preset=tiny", *[f"--{k}={v}" for k, v in as_options(SWITCHES).items()])
    steps = 2000  # the warm-down from step 700
    momentum = [train_gpt.muon_momentum(s, steps, config) for s in range(steps)]
    assert momentum[0] == 0.85 and momentum[200] == pytest.approx(0.91) and momentum[400] == momentum[700] == 0.97
    assert momentum[701] < 0.97 and momentum[steps - 1] == pytest.approx(0.90, abs=1e-3)
    assert train_gpt.wd_multiplier(0, steps, config) == 1 and train_gpt.wd_multiplier(1000, steps, config) == \
        pytest.approx(0.5) and train_gpt.wd_multiplier(steps - 1, steps, config) < 1e-5
    model = train_gpt.GPT(config, 4096)
    rows = {row.pattern: row for row in train_gpt.parameter_table(config, model)}
    batch = (config.total_batch_tokens / 2**19) ** 0.5
    assert rows[r"head\.weight"].lr == pytest.approx(config.head_lr * batch * (64 / 768) ** -0.5)
    with torch.device("meta"):
        reference = train_gpt.GPT(dataclasses.replace(config, depth=12), 4096)
    counted = lambda m: ShardedOptimizer(m, train_gpt.parameter_table(config, m), train_gpt.UPDATE_RULES, config,
                                         Comm()).counted_params
    expected = 0.28 * batch * counted(reference) / counted(model)
    assert rows[r"blocks\.\d+\.attn\.qkv\.weight"].weight_decay == pytest.approx(expected)


def test_the_recipe_agrees_on_1_2_and_4_processes_and_resumes_exactly(options, tmp_path):
    """The switches on a tiny model (rows from BOS, NorMuon whole steps gathered in fp32, cautious and scheduled
    weight decay, nanochat's AdamW groups, bf16 tables): NorMuon's moment is saved per matrix by parameter name
    ([parts, rows, 1] for qkv's q, k and v); a resume mid-run gives the whole run's losses; 2 and 4 processes give the
    same losses up to float rounding."""
    recipe = idea(tmp_path)
    options = {**options, **as_options(SWITCHES), "total_batch_tokens": 512, "steps": 6, "lr_batch_ref": 512}
    whole, losses = train(recipe, options, run_id="whole")
    assert whole["steps"] == 6 and all(loss == loss for loss in losses.values())
    saved = torch.load(tmp_path / "runs" / "whole" / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert saved["blocks.0.attn.qkv.weight"]["second_moment"].shape == (3, 32, 1)
    assert saved["blocks.0.mlp.proj.weight"]["second_moment"].shape == (1, 1, 128)  # wide: per column
    assert set(saved["resid_lambdas"]) == {"exp_avg", "exp_avg_sq"}
    train(recipe, options, run_id="cut", stop_after=3)
    resumed, resumed_losses = train(recipe, options, run_id="cut",
                                    resume=str(tmp_path / "runs" / "cut" / "checkpoint.pt"))
    assert resumed_losses == losses and resumed["val_loss"] == whole["val_loss"]
    for world in (2, 4):
        assert train_processes(recipe, options, world, run_id=f"world{world}") == pytest.approx(losses, rel=2e-4)
    assert math.isfinite(whole["val_loss"])


def test_the_recipe_compiles_in_its_first_step_only_and_trains_like_eager(options, tmp_path, monkeypatch):
    """Compiled (aot_eager: Dynamo's tracing and guards as on a GPU), the model and NorMuon's Polar Express on every
    stack (tall, wide, square, of one) compile in the first warm-up step, nothing after; the losses are eager's."""
    recipe = idea(tmp_path)
    options = {**options, **as_options(SWITCHES), "lr_batch_ref": 256, "warmup_timing_steps": 2}
    _, eager = train(recipe, options, run_id="eager")
    calls = compiles_by_step(monkeypatch)
    _, compiled = train(recipe, options, run_id="compiled", compile="true")
    assert len(calls) == 2 + 6 and calls[0][1] > calls[0][0] == 0
    assert all(after == before for before, after in calls[1:]), calls
    assert compiled == pytest.approx(eager, rel=1e-3)
