"""The sharded optimizer engine (harness/optim.py), whatever the recipe's parameter table and update rules: every
parameter gets one update rule and sits in exactly one gradient bucket; a table that does not say what to do with a
parameter is one error that names it; element-wise rules see fp32 even for bf16 parameters; the state is kept by
parameter name, whatever the buckets."""

import re
import types

import pytest
import torch
import torch.nn as nn

import harness.loop
import train_gpt
from harness.comm import Comm
from harness.config import ConfigError
from harness.optim import ElementShard, MatrixShard, Rule, ShardedOptimizer, UpdateRule, assign
from tests.helpers import build_optimizer, config_of, recipe_step
from tests.test_train import argv, options, shards  # noqa: F401  (fixtures)


def small(*changes):
    return config_of("--depth=4", "--model_dim=32", "--head_dim=16", "--seq_len=64", "--short_window=16",
                     "--device_batch=2", *changes)


def randomized_model(config, seed=0):
    torch.manual_seed(seed)
    model = train_gpt.GPT(config, 512)
    with torch.no_grad():  # away from the zero-initialized projections: every parameter gets a gradient
        for p in model.parameters():
            p.normal_(std=0.1 if p.ndim == 2 else 0.5)
    return model


# -----------------------------------------------------------------------------
# One rule and one bucket per parameter


@pytest.mark.parametrize("changes", [(), ("--bucket_mb=0",), ("--embed_dtype=bf16", "--muon_split_qkv=true"),
                                     ("--depth=3", "--value_embeds=false")],
                         ids=["default buckets", "a bucket per parameter", "bf16 tables, split qkv", "odd depth"])
def test_every_parameter_is_in_exactly_one_bucket_with_the_rule_of_the_first_row_matching_its_name(changes):
    config = small(*changes)
    model = train_gpt.GPT(config, 512)
    table, names = train_gpt.parameter_table(config, model), {p: n for n, p in model.named_parameters()}
    opt = build_optimizer(model, config)
    in_buckets = [p for bucket in opt.buckets for p in bucket.params]
    assert sorted(map(id, in_buckets)) == sorted(map(id, model.parameters()))  # each one once, none left out
    assert [name for bucket_names in opt.names for name in bucket_names] == [names[p] for p in in_buckets]
    for bucket, shard in zip(opt.buckets, opt.shards):
        rows = [next(row for row in table if re.fullmatch(row.pattern, names[p])) for p in bucket.params]
        assert len({row.update for row in rows}) == 1 and len({p.dtype for p in bucket.params}) == 1  # one of each
        kind = train_gpt.UPDATE_RULES[rows[0].update].shards
        assert isinstance(shard, {"elements": ElementShard, "matrices": MatrixShard}[kind])
        for p in bucket.params:  # its gradient is its part of the bucket's flat buffer
            assert p.grad.untyped_storage().data_ptr() == bucket.grads.untyped_storage().data_ptr()
    assert opt.counted_params == sum(p.numel() for p in model.parameters()
                                     if next(r for r in table if re.fullmatch(r.pattern, names[p])).counts)
    if "--bucket_mb=0" in changes:
        assert all(len(bucket.params) == 1 for bucket in opt.buckets)


# -----------------------------------------------------------------------------
# A parameter table that does not say what to do with a parameter: one error naming it


def matrix_rule(grads, state, hp):
    return grads.sign()


RULES = {**train_gpt.UPDATE_RULES, "test_matrices": UpdateRule(matrix_rule, shards="matrices")}


def with_extra_parameter(config):
    model = train_gpt.GPT(config, 512)
    model.register_parameter("extra_gain", nn.Parameter(torch.ones(8)))  # a 1-D parameter no recipe row names
    return model


@pytest.mark.parametrize("case", ["unknown update rule", "matrix rule on a 1-D parameter", "no row matches"])
def test_a_table_that_does_not_say_how_to_update_a_parameter_is_a_config_error_naming_it(case):
    config = small()
    model = with_extra_parameter(config)
    table = train_gpt.parameter_table(config, model)
    first = next(name for name, _ in model.named_parameters())
    name, row, says = {
        "unknown update rule": (first, Rule(re.escape(first), "no_such_rule", 0.1), "'no_such_rule'"),
        "matrix rule on a 1-D parameter": ("extra_gain", Rule("extra_gain", "test_matrices", 0.1), "(8,)"),
        "no row matches": ("extra_gain", None, "matches no row"),
    }[case]
    table = table if row is None else [row, *table]
    for build in (lambda: assign(model, table, RULES), lambda: ShardedOptimizer(model, table, RULES, config, Comm())):
        with pytest.raises(ConfigError) as exc:
            build()
        assert re.search(rf"\b{re.escape(name)}\b", str(exc.value)) and says in str(exc.value), str(exc.value)


def test_a_run_whose_model_has_a_parameter_the_table_lacks_stops_with_one_line_naming_it(options, tmp_path,
                                                                                          monkeypatch):  # noqa: F811
    real = train_gpt.GPT

    def gpt_with_extra_parameter(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_parameter("extra_gain", nn.Parameter(torch.ones(8)))
        return model
    monkeypatch.setattr(train_gpt, "GPT", gpt_with_extra_parameter)
    with pytest.raises(SystemExit) as exc:
        harness.loop.main(train_gpt, argv(options))
    text = str(exc.value.code)
    assert text.startswith("error: parameter extra_gain (8,) matches no row") and "\n" not in text, text
    assert not (tmp_path / "runs").exists()  # before any run folder


# -----------------------------------------------------------------------------
# What the rules see, and the state they keep


class Table(nn.Module):
    """A bf16 table and an fp32 matrix: an element-wise rule's and a matrix rule's parameters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(64, 8).bfloat16())
        self.matrix = nn.Parameter(torch.randn(16, 8))


def test_an_element_wise_rule_sees_fp32_and_a_bf16_parameter_is_rounded_once_a_step():
    seen = []

    def momentum_sgd(params, grads, states, lr, weight_decay, hp):
        for p, g, state in zip(params, grads, states):
            seen.append((p.dtype, g.dtype))
            momentum = state.setdefault("momentum", torch.zeros_like(p))
            momentum.mul_(0.5).add_(g)
            p.add_(momentum, alpha=-lr)
    rules = {"sgd": UpdateRule(momentum_sgd), "sign": UpdateRule(matrix_rule, shards="matrices")}
    model = Table()
    config = types.SimpleNamespace(reduce_dtype="fp32", bucket_mb=256)
    opt = ShardedOptimizer(model, [Rule("table", "sgd", 0.125), Rule("matrix", "sign", 0.25)], rules, config, Comm())
    expected, momentum = model.table.detach().float(), torch.zeros(64, 8)
    matrix = model.matrix.detach().clone()
    for step in range(3):
        grad = torch.randn(64, 8)
        model.table.grad.copy_(grad)
        model.matrix.grad.copy_(torch.randn(16, 8))
        matrix -= 0.25 * model.matrix.grad.sign()
        opt.set_schedule(1.0)
        opt.step()
        momentum = momentum * 0.5 + grad.bfloat16().float()  # the gradient arrives in the parameter's dtype
        expected = (expected - 0.125 * momentum).bfloat16().float()  # fp32 math, one rounding a step
        assert model.table.dtype == torch.bfloat16 and torch.equal(model.table.detach().float(), expected), step
        assert torch.equal(model.matrix.detach(), matrix), step
    assert set(seen) == {(torch.float32, torch.float32)}
    state = opt.full_state_dict()
    assert state["steps"] == 3 and state["state"].keys() == {"table"}  # the sign rule keeps no state
    assert state["state"]["table"]["momentum"].dtype == torch.float32 and torch.equal(
        state["state"]["table"]["momentum"], momentum)


def test_the_full_state_is_by_parameter_name_and_moves_between_bucket_layouts():
    """A checkpoint's optimizer state does not depend on the buckets (--bucket_mb may change on resume): the state
    of a step with a bucket per parameter, loaded with one bucket per rule, gives back the same state, and the same
    next step."""
    idx = torch.randint(0, 512, (4, 65), generator=torch.Generator().manual_seed(0))
    per_parameter, per_rule = small("--bucket_mb=0"), small()
    model = randomized_model(per_parameter)
    opt = build_optimizer(model, per_parameter)
    recipe_step(model, opt, per_parameter, idx[:2, :-1], idx[:2, 1:], step=0, num_steps=4)
    full = opt.full_state_dict()
    params = dict(model.named_parameters())
    assert full["steps"] == 1 and full["state"] and full["state"].keys() <= params.keys()
    for name, state in full["state"].items():
        assert all(t.shape == params[name].shape for t in state.values()), name
    other = randomized_model(per_rule)
    other.load_state_dict(model.state_dict())
    other_opt = build_optimizer(other, per_rule)
    assert len(other_opt.buckets) < len(opt.buckets)
    other_opt.load_full_state_dict(full)
    again = other_opt.full_state_dict()
    assert again["steps"] == 1 and again["state"].keys() == full["state"].keys()
    for name, state in full["state"].items():
        assert state.keys() == again["state"][name].keys()
        assert all(torch.equal(t, again["state"][name][key]) for key, t in state.items()), name
    for m, o in ((model, opt), (other, other_opt)):
        recipe_step(m, o, per_rule, idx[2:, :-1], idx[2:, 1:], step=1, num_steps=4)
    for name, p in other.named_parameters():  # stacks of other sizes: bf16 matmuls may round apart by an ulp
        assert torch.allclose(p, params[name], rtol=0, atol=1e-2 * params[name].abs().max().item()), name
