"""The dry run (harness/dryrun.py, `python train_gpt.py --dry_run`): its exact figures are the real engine's tensors,
its activation models agree with a real forward and a real compiled step, and both GPU presets plan on this CPU in
seconds without allocating the model."""

import json
import math
import time

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._inductor.compile_fx import partition_fn as inductor_partition
from torch._inductor.decomposition import select_decomp_table

import train_gpt
from harness import dryrun
from harness.comm import Comm, element_layout, matrix_layout
from harness.optim import assign, bucket_plan
from harness.trace import trace
from tests.helpers import build_optimizer, config_of, main, recipe_step

VOCAB = 300  # padded to 384: the embedding tables' rows are not the vocab


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small config's arguments, with a tokenizer folder that holds only tokenizer.json (all a dry run reads)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "tokenizer.json").write_text(json.dumps({"vocab_size": VOCAB, "bos_token": "<|bos|>",
                                                       "special_tokens": {"<|bos|>": VOCAB - 1}}))
    return ("--depth=3", "--model_dim=64", "--head_dim=16", "--seq_len=32", "--short_window=8", "--device_batch=2",
            "--total_batch_tokens=256", "--fused_adam=false", "--steps=5", f"--tokenizer={folder}")


def storage_sum(tensors):
    """Bytes of the distinct storages of real tensors."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def tensors_of(obj):
    return [t for t in vars(obj).values() if isinstance(t, torch.Tensor)]


def real_engine(config, steps=1):
    """A real model on the CPU and its real ShardedOptimizer (world 1) after `steps` steps of the recipe."""
    torch.manual_seed(0)
    model = train_gpt.GPT(config, VOCAB, 0)
    rows = config.total_batch_tokens // config.seq_len
    optimizer = build_optimizer(model, config, Comm(0, 1), accum_steps=rows // config.device_batch)
    for step in range(steps):
        tokens = torch.randint(0, VOCAB, (rows, config.seq_len + 1))
        recipe_step(model, optimizer, config, tokens[:, :-1], tokens[:, 1:], step, 10)
    return model, optimizer


@pytest.mark.parametrize("extra", [(), ("--embed_dtype=bf16",), ("--reduce_dtype=bf16", "--muon_split_qkv")])
def test_static_figures_equal_the_real_optimizers_tensors_after_a_step_at_world_1(extra, small):
    config = config_of(*small, *extra)
    model, optimizer = real_engine(config)
    weights = [*model.parameters(), *model.buffers()]
    gradients = [t for b in optimizer.buckets for t in (b.grads, b.received, b.mean)]
    everything = weights + gradients + [t for s in optimizer.shards for t in tensors_of(s)] + \
        [t for b in optimizer.buckets for t in tensors_of(b)] + \
        [t for s in optimizer.shards for *_, state in s.states() for t in state.values()]

    _, order = trace(dryrun.meta_model(train_gpt, config, VOCAB, 0), config.seq_len)
    meta_model, meta_optimizer = dryrun.plan_rank(train_gpt, config, VOCAB, 0, 1, 0, order)
    planned = dryrun.static_bytes(meta_model, meta_optimizer)
    assert all(p.device.type == "meta" for p in meta_model.parameters())
    assert planned["weights"] == storage_sum(weights)
    assert storage_sum(weights + gradients) == storage_sum(weights) + storage_sum(gradients)  # nothing shared
    assert planned["gradients"] == storage_sum(gradients)
    assert planned["optimizer state"] == optimizer.state_bytes() > 0
    assert sum(planned.values()) == storage_sum(everything)


def layout_figures(config, world):
    """Per rank, what the layouts of harness/comm.py give on the real shapes (the recipe's AdamW: two fp32 values an
    element of the rank's slice; Muon: one fp32 momentum an element of its whole matrices), independently of the
    dry run's walk over the engine's tensors."""
    with torch.device("meta"):
        model = train_gpt.GPT(config, VOCAB, 0)
    _, order = trace(model, config.seq_len)
    assigned = assign(model, train_gpt.parameter_table(config, model), train_gpt.UPDATE_RULES)
    reduce_size = {"fp32": 4, "bf16": 2}[config.reduce_dtype]
    ranks = [dict.fromkeys(("weights", "gradients", "optimizer state", "optimizer buffers"), 0) for _ in range(world)]
    load = [0] * world
    for rank_figures in ranks:
        rank_figures["weights"] += sum(b.numel() * b.element_size() for b in model.buffers())
    for update, params in bucket_plan(list(model.parameters()), assigned, train_gpt.UPDATE_RULES, order,
                                      config.bucket_mb):
        shapes, size = [tuple(p.shape) for p in params], params[0].element_size()
        elements = update == "adamw"
        layout = element_layout(shapes, world) if elements else \
            matrix_layout(shapes, world, [assigned[p][1].parts for p in params], load)
        for rank, figures in enumerate(ranks):
            received = layout.shard * reduce_size if world > 1 or reduce_size != size else 0
            figures["gradients"] += layout.numel * size + received + (layout.shard * 4 if reduce_size != 4 else 0)
            if elements:
                lo, hi = rank * layout.shard, (rank + 1) * layout.shard
                mine = sum(max(0, min(o + math.prod(s), hi) - max(o, lo)) for o, s in zip(layout.offsets, shapes))
                figures["weights"] += layout.numel * size
                figures["optimizer state"] += 8 * mine
                figures["optimizer buffers"] += layout.shard * 4 if size != 4 else 0
            else:
                figures["weights"] += sum(p.numel() for p in params) * size
                figures["optimizer state"] += 4 * sum(math.prod(shape) for _, _, shape in layout.stacks[rank])
                figures["optimizer buffers"] += 2 * layout.numel
    return ranks


@pytest.fixture
def untraced(monkeypatch):
    """For tests of the static figures: the compiled step's trace (seconds a plan) stubbed out."""
    monkeypatch.setattr(dryrun, "compiled_activation_model", lambda *args: (0, 1, "not traced: not what is tested"))


@pytest.mark.baseline  # layout_figures knows the baseline's rules (AdamW's two states, Muon's momentum)
@pytest.mark.parametrize("world,extra", [(1, ()), (4, ()), (8, ("--embed_dtype=bf16", "--reduce_dtype=bf16")),
                                         (4, ("--muon_split_qkv", "--bucket_mb=0"))])
def test_static_figures_of_every_rank_of_a_simulated_world_are_the_layouts(world, extra, small, untraced):
    config = config_of(*small, "--total_batch_tokens=512", "--device_batch=1", *extra)
    _, order = trace(dryrun.meta_model(train_gpt, config, VOCAB, 0), config.seq_len)
    planned = [dryrun.static_bytes(model, optimizer)
               for model, optimizer in dryrun.plan_world(train_gpt, config, VOCAB, 0, world, order)]
    assert planned == layout_figures(config, world)
    figures = dryrun.plan(train_gpt, config_of(*small, "--total_batch_tokens=512", "--device_batch=1",
                                               f"--world={world}", *extra))
    assert figures["static"] == max(planned, key=lambda f: sum(f.values()))
    assert all(p.device.type == "meta" for model in figures["models"] for p in model.parameters())


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("extra", [(), ("--value_embeds=false", "--window_pattern=L"), ("--depth=4",)])
def test_saved_activations_agree_with_a_real_forward_on_the_cpu_within_2_percent(autocast, extra, small):
    """The meta-device model (emulated bf16 autocast, fused attention) against the saved tensors of a real forward
    (the CPU's real autocast and its fused SDPA kernel). The difference is the mask, which the CPU kernel keeps as
    a float copy (the model keeps it bool)."""
    config = config_of(*small, *extra)
    torch.manual_seed(0)
    model, rows = train_gpt.GPT(config, VOCAB, 0), 3
    idx = torch.randint(0, VOCAB, (rows, config.seq_len))
    real = dryrun.saved_bytes(model, idx, autocast, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast))
    fixed, per_row = dryrun.activation_model(train_gpt, config, VOCAB, 0, autocast)
    assert abs((fixed + rows * per_row) / real - 1) < 0.02
    assert per_row > 0 and fixed >= 0


def real_compiled_saved_bytes(config, rows, autocast):
    """The saved tensors of a real compiled step on the CPU: the model through Dynamo and AOTAutograd with Inductor's
    decompositions and partitioner (the graphs run as they are, not code-generated), counted by saved-tensor hooks
    on what the compiled forward hands to its backward."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = train_gpt.GPT(config, VOCAB, 0)
    backend = aot_autograd(fw_compiler=lambda graph, _: make_boxed_func(graph.forward),
                           partition_fn=inductor_partition, decompositions=select_decomp_table())
    idx = torch.randint(0, VOCAB, (rows, config.seq_len))
    return dryrun.saved_bytes(torch.compile(model, backend=backend), idx, autocast,
                              torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast))


@pytest.mark.parametrize("autocast,extra", [(False, ()), (True, ()), (False, ("--doc_mask",)),
                                             (False, ("--loss=chunked", "--loss_chunk=32"))])
def test_compiled_saved_activations_agree_with_a_real_compiled_step_on_the_cpu(autocast, extra, small):
    """The traced figure (fake tensors, emulated autocast, fused_attention) against a real compiled step (real
    tensors, the CPU's autocast and its fused SDPA kernel, which keeps a float copy of a mask). With the chunked
    loss both keep the head's logits: the partitioner's CSE merges the backward's recomputing matmul into the
    forward's."""
    config, rows = config_of(*small, *extra), 3
    real = real_compiled_saved_bytes(config, rows, autocast)
    fixed, per_row, _ = dryrun.compiled_activation_model(train_gpt, config, VOCAB, 0, autocast)
    assert abs((fixed + rows * per_row) / real - 1) < dryrun.COMPILED_CPU_AGREEMENT
    assert per_row > 0 and fixed >= 0


@pytest.mark.parametrize("autocast", [False, True])
def test_a_compiled_step_keeps_less_than_the_eager_forward(autocast, small):
    config = config_of(*small)
    compiled_fixed, compiled_per_row, _ = dryrun.compiled_activation_model(train_gpt, config, VOCAB, 0, autocast)
    eager_fixed, eager_per_row = dryrun.activation_model(train_gpt, config, VOCAB, 0, autocast)
    assert compiled_per_row < eager_per_row and compiled_fixed <= eager_fixed


def test_the_compiled_figure_at_reduced_depths_equals_tracing_every_layer(small, monkeypatch):
    """Two layer kinds a period (2) apart: traced at 2 and 4 layers and extrapolated to 6, against all 6 traced."""
    config = config_of(*small, "--depth=6", "--window_pattern=SL")
    fixed, per_row, how = dryrun.compiled_activation_model(train_gpt, config, VOCAB, 0)
    assert how == "traced at 2 and 4 layers, extrapolated per 2 to 6"
    monkeypatch.setattr(dryrun, "reduced_depths", lambda recipe, config: None)
    assert dryrun.compiled_activation_model(train_gpt, config, VOCAB, 0) == (fixed, per_row, "every layer traced")


def test_a_torch_that_cannot_trace_the_compiled_step_gets_the_eager_figure_said_so(small, monkeypatch):
    """The trace leans on private torch APIs: where they moved, the dry run (and the smoke test's advice) still
    answers, with the eager figure in the compiled one's place and a line that says so."""
    def moved(*args):
        raise ImportError("cannot import name 'partition_fn'")
    monkeypatch.setattr(dryrun, "compiled_activation_model", moved)
    figures = dryrun.plan(train_gpt, config_of(*small))
    assert figures["activations_model"]["compiled"] == figures["activations_model"]["eager"]
    assert any("NOT traced" in line and "eager's figure stands in" in line for line in dryrun.report(figures))


def test_the_peak_counts_the_compiled_figure_when_the_run_compiles_else_the_eager_one(small, monkeypatch):
    traced, real = {}, dryrun.compiled_activation_model  # one model, three --compile modes: traced once
    monkeypatch.setattr(dryrun, "compiled_activation_model",
                        lambda *args: traced["figure"] if traced else traced.setdefault("figure", real(*args)))
    lines = {}
    for compile, mode in (("auto", "compiled"), ("blocks", "compiled"), ("false", "eager")):
        figures = dryrun.plan(train_gpt, config_of(*small, f"--compile={compile}"))
        assert figures["mode"] == mode
        activations = dryrun.activations_at(figures, mode, figures["config"].device_batch)
        assert figures["activations"] == activations > 0
        lines[compile] = dryrun.report(figures)
    assert any(line.startswith("[modelled] saved, compiled") and line.endswith("used (--compile=auto compiles on CUDA)")
               for line in lines["auto"])
    assert any(line.startswith("[modelled] saved, eager") and line.endswith("used (--compile=false)")
               for line in lines["false"])
    assert "activations as eager" in lines["false"][-1] and "activations as compiled" in lines["auto"][-1]


def test_the_verdict_follows_the_peak_and_the_largest_device_batch_fits(small):
    assert [dryrun.verdict(peak, 100) for peak in (50, 90, 91, 100, 101)] == \
        ["fits", "fits", "tight", "tight", "does not fit"]
    figures = dryrun.plan(train_gpt, config_of(*small, "--world=2", "--gpu=A100"))
    largest = figures["largest_batch"]
    assert largest in dryrun.compatible_batches(figures["config"], 2) == [1, 2, 4]
    assert dryrun.memory_at(figures, largest)[2] <= dryrun.TIGHT * dryrun.GPUS["A100"]["memory"]
    assert figures["peak_flops"] == 312e12


def test_vocab_from_tokenizer_json_only_else_the_presets_known_vocab_else_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab_size": 1000, "bos_token": "<|bos|>",
                                                         "special_tokens": {"<|bos|>": 990}}))
    assert dryrun.vocab_of(config_of(f"--tokenizer={tmp_path}")) == (1000, 990, f"from {tmp_path}/tokenizer.json")
    vocab, _, source = dryrun.vocab_of(config_of("--preset=gpt2-small-fineweb", "--tokenizer=/nonexistent"))
    assert vocab == 50257 and "known vocab" in source
    with pytest.raises(dryrun.ConfigError, match="no known vocab"):
        dryrun.vocab_of(config_of("--tokenizer=/nonexistent"))


def test_a_flops_budget_is_reported_as_holding_or_exceeded(capsys, small, untraced):
    figures = dryrun.dry_run(train_gpt, config_of(*small))
    for budget, word in ((figures["model_flops"], "holds"), (figures["model_flops"] / 2, "EXCEEDED")):
        dryrun.dry_run(train_gpt, config_of(*small, f"--flops_budget={budget}"))
        assert f"--flops_budget {budget:.3g}: {word}" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["gpt2-core", "gpt2-small-fineweb"])
def test_dry_run_of_each_gpu_preset_at_world_8_prints_a_verdict_in_under_a_minute(preset, capsys):
    start = time.perf_counter()
    figures = main([f"--preset={preset}", "--dry_run", "--world=8", "--tokenizer=/nonexistent"])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert elapsed < 60, f"{preset}: {elapsed:.0f} s"
    assert "verdict: " in out and figures["verdict"] in ("fits", "tight", "does not fit")
    assert ("uncalibrated" in out or "calibrated on published figures" in out) and "known vocab" in out
    assert all(p.device.type == "meta" for model in figures["models"] for p in model.parameters())
    assert all(line.startswith(("[exact]", "[spec]", "[modelled]", "dry run", "  vocab", "memory", "time", "verdict"))
               for line in out.splitlines())
