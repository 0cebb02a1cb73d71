"""The sharded optimizer and its communication on the CPU: the same math as the plain reference and on 1, 2 and 4
gloo processes, what a step communicates against the formula, world-size-independent checkpoints, and a 2-node
torchrun launch on localhost."""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train_gpt
from harness.comm import Comm, step_traffic
from harness.data import load_tokenizer_info
from harness.device import compile_by_block, compile_dynamic
from harness.optim import ElementShard, MatrixShard
from tests.comm_reference import ReferenceOptimizer
from tests.helpers import build_optimizer, config_of, main, recipe_step, trainer as make_trainer
from tests.test_train import argv, log_lines, losses, options, run, shards  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(options, **changes):  # noqa: F811
    return config_of(*argv(options, **changes))


def randomize(model, seed=1):
    """Weights away from the zero-initialized projections, so that every matrix gets a gradient that matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1 if p.ndim == 2 else 0.5)


# -----------------------------------------------------------------------------
# The math: the sharded optimizer against the plain reference, one process


@pytest.mark.baseline  # the reference re-implements the baseline's parameter groups
@pytest.mark.parametrize("fused", [False, True])
def test_sharded_optimizer_matches_the_plain_reference(options, fused):  # noqa: F811
    config = tiny_config(options, fused_adam=str(fused).lower(), bucket_mb=0)  # bucket_mb=0: a bucket per matrix
    info = load_tokenizer_info(config.tokenizer)
    models = [train_gpt.GPT(config, info["vocab_size"]) for _ in range(2)]
    for model in models:
        randomize(model)
    sharded = build_optimizer(models[0], config)
    reference = ReferenceOptimizer(models[1], config, fused=fused)
    torch.manual_seed(2)
    for step in range(3):
        idx = torch.randint(0, info["vocab_size"], (2, config.seq_len + 1))
        for model, opt in ((models[0], sharded), (models[1], reference)):
            opt.set_schedule(0.5 + step / 4, momentum=0.9)
            model(idx[:, :-1], idx[:, 1:]).backward()
            opt.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        # bitwise: the same element-wise AdamW on slices, the same Newton-Schulz (a stack of one matrix each here)
        assert torch.equal(a, b), (name, (a - b).abs().max())


@pytest.mark.baseline  # Muon's Newton-Schulz, in exactly one graph
def test_stacked_orthogonalization_matches_one_matrix_at_a_time_in_one_compiled_graph():
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    graphs = CompileCounterWithBackend("aot_eager")
    compiled = compile_dynamic(train_gpt.newton_schulz, backend=graphs)
    torch.manual_seed(0)
    # square (first: equal sizes must not be taken to be equal), tall and wide stacks, and stacks of one: the
    # layouts Muon meets at any depth and number of processes, in any order
    for shape in ((3, 32, 32), (4, 96, 32), (5, 32, 128), (1, 96, 32), (1, 32, 128), (2, 64, 48), (1, 48, 48)):
        stack = torch.randn(shape)
        one_by_one = torch.stack([train_gpt.orthogonalize(m, 5) for m in stack]).float()
        for result in (train_gpt.orthogonalize(stack, 5), train_gpt.orthogonalize(stack, 5, compiled)):
            assert result.dtype == torch.bfloat16 and result.shape == shape
            # bf16 Newton-Schulz: batched and single matmuls may round differently, by about one bf16 ulp
            assert torch.allclose(result.float(), one_by_one, rtol=0, atol=1e-2), (result.float() - one_by_one).abs().max()
    assert graphs.frame_count == 1  # no recompile for tall, wide or square, for strides, or for a stack of one


@pytest.mark.baseline  # Muon on the fused qkv
def test_muon_split_qkv_orthogonalizes_q_k_and_v_separately(options):  # noqa: F811
    config = tiny_config(options, muon_split_qkv="true")
    model = train_gpt.GPT(config, 512)
    randomize(model)
    opt = build_optimizer(model, config)
    qkv = model.blocks[0].attn.qkv.weight
    before = qkv.detach().clone()
    model(torch.randint(0, 512, (2, 65))[:, :-1], torch.randint(0, 512, (2, 64))).backward()
    grad = qkv.grad.clone()
    opt.set_schedule(1.0, momentum=0.0)  # no momentum: the update is the orthogonalized gradient
    opt.step()
    update = (before - qkv.detach()) / config.matrix_lr
    for part in range(3):  # each 32 x 32 block of the 96 x 32 matrix is an orthogonalized matrix (scale 1)
        rows = slice(32 * part, 32 * (part + 1))
        expected = train_gpt.orthogonalize(grad[rows], config.ns_steps).float()
        assert torch.allclose(update[rows], expected, atol=1e-3)


@pytest.mark.baseline  # the baseline's parameter names, update rules and bucket order
def test_buckets_of_the_baseline_follow_its_backward(options):  # noqa: F811
    """Every parameter in one bucket is tests/test_optim.py's (any recipe); here, the baseline's buckets by name."""
    config = tiny_config(options, depth=4, bucket_mb=0)
    model = train_gpt.GPT(config, 512)
    opt = build_optimizer(model, config)
    assert model.value_layers == [1, 3]
    block = lambda i, value_mix: [f"blocks.{i}.mlp.proj.weight", f"blocks.{i}.mlp.fc.weight",
                                  f"blocks.{i}.attn.proj.weight", *[f"blocks.{i}.attn.value_mix"] * value_mix,
                                  f"blocks.{i}.attn.qkv.weight"]
    # each value-embedding table right after its block's matrices (it is ready there: see the test below)
    expected = ["head.weight", *block(3, True), "value_embeds.1.weight", *block(2, False), *block(1, True),
                "value_embeds.0.weight", *block(0, False), "embed.weight"]
    assert opt.names == [[name] for name in expected]
    kinds = [type(s).__name__ for s in opt.shards]
    assert kinds == ["MatrixShard" if name.endswith("weight") and name.startswith("blocks.") else "ElementShard"
                     for name in expected]
    config = tiny_config(options, depth=4)
    one_bucket = build_optimizer(train_gpt.GPT(config, 512), config)
    # the default bucket size holds all matrices of a tiny model, and all the rest: a bucket per update rule,
    # the matrices' complete at block 0's qkv, the rest's at the token embedding
    assert [type(s) for s in one_bucket.shards] == [MatrixShard, ElementShard]
    assert [(names[0], names[-1]) for names in one_bucket.names] == [
        ("blocks.3.mlp.proj.weight", "blocks.0.attn.qkv.weight"), ("head.weight", "embed.weight")]


@pytest.mark.baseline  # the baseline's value embeddings
def test_value_embeddings_looked_up_in_their_block_change_only_when_their_gradients_are_ready(options):  # noqa: F811
    """GPT.forward looks each value embedding up inside the block loop: the loss and gradients are bitwise those of
    looking every table up before the loop (the code before), but autograd, which runs the ready node made last in
    the forward first, now runs each table's backward right after its block's instead of at the end."""
    config = tiny_config(options, depth=4)
    model = train_gpt.GPT(config, 512)
    randomize(model)
    names = {p: n for n, p in model.named_parameters()}
    order = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: order.append(names[p]))
    torch.manual_seed(3)
    idx = torch.randint(0, 512, (2, config.seq_len + 1))

    def loss_gradients_and_order(up_front):
        order.clear()
        model.zero_grad(set_to_none=True)
        for table in model.value_embeds:
            if up_front:  # looked up now; the block loop gets the result
                table.forward = lambda _, looked_up=table(idx[:, :-1]): looked_up
            else:
                vars(table).pop("forward", None)
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, list(order)

    before_loss, before, before_order = loss_gradients_and_order(up_front=True)
    loss, gradients, in_loop_order = loss_gradients_and_order(up_front=False)
    assert torch.equal(loss, before_loss)
    for name, grad in gradients.items():
        assert torch.equal(grad, before[name]), name
    for j, layer in enumerate(model.value_layers):
        table, qkv = f"value_embeds.{j}.weight", f"blocks.{layer}.attn.qkv.weight"
        assert in_loop_order[in_loop_order.index(qkv) + 1] == table, in_loop_order
        assert before_order.index(table) > before_order.index("blocks.0.attn.qkv.weight"), before_order  # the end


@pytest.mark.parametrize("compiled", [False, True, "blocks"])
def test_buckets_launch_once_each_in_their_order_eager_and_compiled(options, compiled):  # noqa: F811
    """Eager: each bucket's reduce-scatter starts at the gradient that completes it, while the backward goes on.
    Compiled whole (as train_gpt compiles the model), the forward is one autograd node whose backward hands out
    every gradient at once at its end, so nothing can overlap the backward; the buckets still launch once each,
    in their order (which every process must share), though the hooks fire in an order of the graph's own.
    Compiled block by block (--compile=blocks), each block is one autograd node that hands out its own gradients,
    the last block's first: the buckets launch during the backward, as eager."""
    config = tiny_config(options, depth=4, bucket_mb=0)
    model = train_gpt.GPT(config, 512)
    randomize(model)
    names = {p: n for n, p in model.named_parameters()}
    events = []  # parameter names as their gradients are ready, bucket indices as they launch
    for p in model.parameters():  # before the buckets' hooks: a gradient's event comes before the launch it makes
        p.register_post_accumulate_grad_hook(lambda p: events.append(names[p]))
    comm = Comm()
    opt = build_optimizer(model, config, comm)
    index = {bucket.grads.data_ptr(): i for i, bucket in enumerate(opt.buckets)}
    reduce_scatter = comm.reduce_scatter
    comm.reduce_scatter = lambda output, input: events.append(index[input.data_ptr()]) or reduce_scatter(output, input)
    forward = torch.compile(model, backend="aot_eager") if compiled is True else model
    if compiled == "blocks":
        compile_by_block(model, backend="aot_eager")
    producers = {}  # the autograd node that hands each parameter its gradient

    def forward_and_find_producers(*args):
        loss = forward(*args)
        nodes, seen = [loss.grad_fn], set()
        while nodes:
            node = nodes.pop()
            for child, _ in node.next_functions if node not in seen else []:
                if child is not None and hasattr(child, "variable"):
                    producers[names[child.variable]] = node
                elif child is not None:
                    nodes.append(child)
            seen.add(node)
        return loss
    idx = torch.randint(0, 512, (2, config.seq_len + 1))
    recipe_step(forward_and_find_producers, opt, config, idx[:, :-1], idx[:, 1:])  # the recipe's own step
    launches = [e for e in events if isinstance(e, int)]
    assert launches == list(range(len(opt.buckets))), events
    if compiled is True:
        assert len(set(producers.values())) == 1 and len(producers) == len(names)
        assert type(next(iter(producers.values()))).__name__ == "CompiledFunctionBackward"
    else:
        assert len(set(producers.values())) > len(model.blocks)
        for at, bucket in ((k, e) for k, e in enumerate(events) if isinstance(e, int)):
            assert set(opt.names[bucket]) <= set(events[:at]), events
            if not compiled:  # at the very gradient that completes it
                assert events[at - 1] in opt.names[bucket], events
        block0 = min(k for k, e in enumerate(events) if isinstance(e, str) and e.startswith("blocks.0."))
        assert events.index(0) < block0, events  # during the backward: before the first block's gradients
    if compiled == "blocks":  # a compiled block hands out its gradients together, in an order of its graph's own
        for i in range(len(model.blocks)):
            block_nodes = {node for name, node in producers.items() if name.startswith(f"blocks.{i}.")}
            assert len(block_nodes) == 1 and type(block_nodes.pop()).__name__ == "CompiledFunctionBackward"
        block_of = [int(e.split(".")[1]) if isinstance(e, str) and e.startswith("blocks.") else None for e in events]
        in_order = [i for i in block_of if i is not None]
        assert in_order == sorted(in_order, reverse=True), events  # block by block, from the last
        for at, bucket in ((k, e) for k, e in enumerate(events) if isinstance(e, int)):
            mine = [int(n.split(".")[1]) for n in opt.names[bucket] if n.startswith("blocks.")]
            if len(mine) == len(opt.names[bucket]):  # launched before a gradient of the blocks below arrives
                assert all(i is None or i >= min(mine) for i in block_of[:at]), (bucket, events)


# -----------------------------------------------------------------------------
# 1, 2 and 4 processes


def train_steps(rank, world, port, config, out, steps):
    """One gloo process: a Trainer for `steps` steps; rank 0 writes what the test compares."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    info = load_tokenizer_info(config.tokenizer)
    trainer = make_trainer(config, info, rank, world)
    for p in trainer.model.parameters():
        assert p.grad is not None  # views of the gradient buckets from the start
    result = {"losses": []}
    opt = trainer.optimizer
    for step in range(steps):
        before = (dict(trainer.comm.calls), dict(trainer.comm.bytes))
        result["losses"].append(trainer.step(step, steps)[0].item())
        if step == 0:  # after more steps, rounding is amplified (AdamW divides tiny gradients by their own size)
            result["traffic"] = {k: (trainer.comm.calls[k] - before[0].get(k, 0),
                                     trainer.comm.bytes[k] - before[1].get(k, 0)) for k in trainer.comm.calls}
            result["params"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            result["full_state"] = opt.full_state_dict()
    reduce_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[config.reduce_dtype]
    result["expected"] = step_traffic(
        [b.layout for b in opt.buckets], [reduce_dtype] * len(opt.buckets),
        [(s.values if isinstance(s, ElementShard) else s.updates).dtype for s in opt.shards], world)
    result["state_bytes"] = opt.state_bytes()
    if rank == 0:
        torch.save(result, out)
    trainer.loader.close()
    if world > 1:
        dist.destroy_process_group()


def train_on(world, config, tmp_path, steps=3):
    out = tmp_path / f"world{world}.pt"
    if world == 1:
        train_steps(0, 1, 0, config, out, steps)
    else:
        mp.spawn(train_steps, args=(world, free_port(), config, out, steps), nprocs=world)
    return torch.load(out, weights_only=True)


def test_one_two_and_four_processes_train_alike_and_communicate_by_the_formula(options, tmp_path):  # noqa: F811
    """8 rows a step of 2 per pass: 1 process x 4 micro-steps, 2 x 2, 4 x 1."""
    config = tiny_config(options, total_batch_tokens=512, bucket_mb=0)
    runs = {world: train_on(world, config, tmp_path) for world in (1, 2, 4)}
    for world, result in runs.items():
        # the reduction order and the micro-batches' rows differ (the loader deals rows round-robin): float rounding
        assert result["losses"] == pytest.approx(runs[1]["losses"], rel=1e-4), world
        for name, p in result["params"].items():
            one = runs[1]["params"][name]
            if name.startswith("blocks.") and p.ndim == 2:  # Muon: bf16 Newton-Schulz pushes the gradient's rounding
                # in its small singular directions up to full size (seen: 1.8% of a zero-initialized proj's update)
                assert (p - one).norm() <= 0.05 * one.norm(), (world, name)
            else:  # AdamW's first step turns a near-zero gradient's rounding into up to ~lr x 1e-3 (seen: 6e-6)
                assert torch.allclose(p, one, rtol=1e-5, atol=1e-5), (world, name)
        # the gathered state of the first step, parameter by parameter (the same names and keys on any world size)
        state, one_state = result["full_state"]["state"], runs[1]["full_state"]["state"]
        assert result["full_state"]["steps"] == 1 and state.keys() == one_state.keys(), world
        for name, value in state.items():
            assert value.keys() == one_state[name].keys(), (world, name)
            for key in value:
                assert torch.allclose(value[key], one_state[name][key], rtol=1e-4, atol=1e-7), (world, name, key)
        # what a step sends: one reduce-scatter and one all-gather per bucket, one all-reduce of the loss
        assert result["traffic"] == {k: v for k, v in result["expected"].items() if v[0]}, world
    assert runs[1]["traffic"]["reduce_scatter"][0] == len(runs[1]["params"])  # bucket_mb=0: a bucket per parameter
    # gradients sent (and summed) in bf16: half the reduce-scatter bytes, the losses within bf16 rounding
    bf16 = train_on(2, dataclasses.replace(config, reduce_dtype="bf16"), tmp_path)
    assert bf16["traffic"] == {k: v for k, v in bf16["expected"].items() if v[0]}
    assert bf16["traffic"]["reduce_scatter"][1] * 2 == runs[2]["traffic"]["reduce_scatter"][1]
    assert bf16["losses"] == pytest.approx(runs[1]["losses"], rel=1e-3)
    # optimizer state per process falls with the world size (up to padding to whole matrices and aligned shards)
    assert runs[4]["state_bytes"] <= runs[1]["state_bytes"] / 3


# -----------------------------------------------------------------------------
# Multi-node launch, and a checkpoint that does not depend on the world size


def test_two_nodes_on_localhost_train_and_a_single_process_resumes_their_checkpoint(options, tmp_path):  # noqa: F811
    """runs/multinode_torchrun.sh started twice on 127.0.0.1 (--nnodes=2, one process each, c10d rendezvous), as two
    machines would run it; the run stops after step 4 with its checkpoint, and one process resumes it."""
    _, whole = run(options, run_id="whole")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env = {**env, "HEAD": "127.0.0.1", "NNODES": "2", "GPUS": "1", "PORT": str(port), "PYTHON": sys.executable}
    command = ["bash", str(REPO / "runs" / "multinode_torchrun.sh"), *argv(options, run_id="nodes", save_every=3,
                                                                              stop_after=4)]
    nodes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(err[-3000:] for _, err in outputs)
    log = tmp_path / "runs" / "nodes" / "log.txt"
    assert "gradient accumulation 1, world size 2" in log.read_text()
    two = losses(log_lines(log))
    assert sorted(two) == [1, 2, 3, 4]
    for step in two:  # other micro-batch rows and reduction order: float rounding, as in test_train's 1 vs 2  # (5e-4 as there)
        assert two[step] == pytest.approx(losses(whole)[step], rel=5e-4), step
    checkpoint = tmp_path / "runs" / "nodes" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] == 4
    results, resumed = run(options, run_id="nodes", resume=str(checkpoint))  # now on one process
    assert "gradient accumulation 2, world size 1" in log.read_text().rsplit("model:", 1)[1]
    for step in (5, 6):
        assert losses(resumed)[step] == pytest.approx(losses(whole)[step], rel=5e-4), step
    assert results["steps"] == 6


def test_an_old_checkpoint_is_refused_with_a_message(options, tmp_path):  # noqa: F811
    run(options, run_id="old", steps=2, save_every=1, stop_after=1)  # interrupted: a checkpoint, no results
    checkpoint = tmp_path / "runs" / "old" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["optimizers"] = state.pop("optimizer")  # the per-process form before the sharded optimizer
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit, match="predates the sharded optimizer"):
        main(argv(options, run_id="old", steps=2, resume=checkpoint))


@pytest.mark.baseline  # AdamW with the baseline's embedding lr (any rule: tests/test_optim.py)
def test_bf16_parameters_keep_fp32_adamw_state_and_math(options):  # noqa: F811
    """A bf16 table (issue 10's switch makes them) is updated through fp32: fp32 moments, fp32 math, one rounding."""
    config = tiny_config(options)
    model = train_gpt.GPT(config, 512)
    randomize(model)
    model.embed.to(torch.bfloat16)
    opt = build_optimizer(model, config)
    start = model.embed.weight.detach().float()
    model.embed.weight.grad.copy_(torch.randn(model.embed.weight.shape))  # (a CPU forward would need autocast)
    grad = model.embed.weight.grad.float()
    opt.set_schedule(1.0, momentum=config.muon_momentum)
    opt.step()  # no backward, no hooks: every bucket is reduced right here
    assert model.embed.weight.dtype == torch.bfloat16
    state = opt.full_state_dict()["state"]["embed.weight"]
    assert state.keys() == {"exp_avg", "exp_avg_sq"} and all(t.dtype == torch.float32 for t in state.values())
    expected = start.clone().requires_grad_()
    expected.grad = grad
    adam_lr = config.embed_lr * (model.embed.embedding_dim / 768) ** -0.5
    torch.optim.AdamW([expected], lr=adam_lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=0).step()
    assert torch.equal(model.embed.weight.detach(), expected.detach().bfloat16())


@pytest.mark.baseline  # its "today" design is tests/comm_reference.py's plain optimizer of the baseline's groups
def test_comm_benchmark_models_both_designs_and_measures_on_one_cpu_process(capsys):
    import bench.comm
    bench.comm.main(["--depth", "12", "24", "--no-record", "--measure", "--tiny", "--warmup=1", "--steps=2"])
    out = capsys.readouterr().out
    shares = [float(x) for x in __import__("re").findall(r"= ([\d.]+)% of the step", out)]
    assert len(shares) == 6  # d12 today, new (overlapped), new (whole-model compile); d24 likewise
    for today, overlapped, whole in (shares[:3], shares[3:]):
        assert overlapped < today and overlapped < whole  # the reduce-scatters that overlap the backward cost less
    memory = [float(x) for x in __import__("re").findall(r"\(([\d.]+) of today's\)", out)]
    assert len(memory) == 2 and max(memory) <= 1 / 6  # the goal: optimizer state at world size 8
    assert out.count("measured today:") == 2 and out.count("measured new:") == 2


def test_gradients_replaced_behind_the_buckets_back_fail_loudly(options):  # noqa: F811
    config = tiny_config(options)
    model = train_gpt.GPT(config, 512)
    opt = build_optimizer(model, config)
    model.zero_grad(set_to_none=True)  # the usual PyTorch idiom would leave the buckets empty
    with pytest.raises(RuntimeError, match="no longer its view of the gradient bucket"):
        model(torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64))).backward()  # the hooks check
        opt.step()
