"""harness/speedups.py's chunked soft-capped cross-entropy against the plain loss of GPT.forward, bf16 embedding
tables, and a training loop that reads the loss only when it logs it (all on the CPU)."""

import re

import pytest
import torch
import torch.nn.functional as F

import harness.loop
import train_gpt
from harness import speedups
from harness.config import ConfigError
from tests.helpers import build_optimizer, check_config, main, recipe_step
from tests.test_train import argv, log_lines, losses, options, run, shards  # noqa: F401  (fixtures)


def plain_softcapped_cross_entropy(h, w, targets, cap, vocab):
    """GPT.forward's plain loss, per row."""
    logits = (h @ w.t())[:, :vocab].float()
    return F.cross_entropy(cap * torch.tanh(logits / cap), targets, reduction="none")


def loss_and_grads(loss_fn, h, w, targets, reduction):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    losses = loss_fn(h, w, targets)
    weights = torch.linspace(0.5, 1.5, len(losses))  # reduction="none" gets an uneven upstream gradient
    (losses.mean() if reduction == "mean" else (losses * weights).sum()).backward()
    return losses, h.grad, w.grad


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("chunk_rows", [16, 50, 1000])  # 50 rows: chunks of 16 leave a short last one
def test_chunked_loss_equals_the_plain_one_in_value_and_gradient(chunk_rows, reduction):
    torch.manual_seed(0)
    h, w = torch.randn(50, 32), torch.randn(128, 32)  # a head padded to 128 rows for a vocab of 100
    targets = torch.randint(0, 100, (50,))
    cap = 15.0
    plain = loss_and_grads(lambda h, w, t: plain_softcapped_cross_entropy(h, w, t, cap, 100), h, w, targets,
                           reduction)
    chunked = loss_and_grads(lambda h, w, t: speedups.chunked_softcapped_cross_entropy(h, w, t, cap, 100,
                                                                                       chunk_rows),
                             h, w, targets, reduction)
    for a, b, what in zip(chunked, plain, ("loss", "grad h", "grad w")):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=what)
    assert (chunked[2][100:] == 0).all()  # the padded rows of the head get no gradient


def test_chunked_loss_under_bf16_autocast_is_close_to_the_plain_one():
    """Matmuls in bf16 as the plain head Linear's under autocast; everything after the matmul in fp32."""
    torch.manual_seed(0)
    h, w = torch.randn(64, 32), torch.randn(128, 32) * 0.3
    targets = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = loss_and_grads(lambda h, w, t: F.cross_entropy(
            15 * torch.tanh(F.linear(h, w)[:, :100].float() / 15), t, reduction="none"), h, w, targets, "mean")
        chunked = loss_and_grads(lambda h, w, t: speedups.chunked_softcapped_cross_entropy(h, w, t, 15.0, 100, 16),
                                 h, w, targets, "mean")
    for a, b, what in zip(chunked, plain, ("loss", "grad h", "grad w")):
        assert a.dtype == b.dtype, what
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-4, msg=what)  # bf16 matmuls: 8 mantissa bits


def test_chunked_loss_never_keeps_logits_for_backward():
    saved = []
    h, w = torch.randn(64, 32, requires_grad=True), torch.randn(128, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        speedups.chunked_softcapped_cross_entropy(h, w, torch.randint(0, 100, (64,)), 15.0, 100, 16).mean()
    assert sorted(tuple(t.shape) for t in saved) == [(64,), (64,), (64, 32), (128, 32)]  # h, w, targets, lse


def tiny_model(**changes):
    torch.manual_seed(0)
    config = train_gpt.Config(depth=2, model_dim=32, head_dim=16, seq_len=32, short_window=8, **changes)
    model = train_gpt.GPT(config, vocab_size=200)
    with torch.no_grad():  # weights that give every parameter a gradient, and an uneven softmax
        for block in model.blocks:
            block.attn.proj.weight.normal_(std=0.05)
            block.mlp.proj.weight.normal_(std=0.05)
        head = getattr(model, "head", None)  # a recipe may tie its head to the embedding
        if head is not None:
            head.weight.normal_(std=0.3)
    return model


def test_gpt_with_the_chunked_loss_matches_the_plain_loss_and_gradients():
    idx = torch.randint(0, 200, (3, 32))
    plain, chunked = tiny_model(), tiny_model(loss="chunked", loss_chunk=40)
    plain(idx, idx).backward()
    loss = chunked(idx, idx)
    loss.backward()
    assert loss.item() == pytest.approx(plain(idx, idx).item(), rel=1e-6)
    for (name, p), q in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)
    with torch.no_grad():  # evaluation's per-token losses
        torch.testing.assert_close(chunked(idx, idx, reduction="none"), plain(idx, idx, reduction="none"))
        assert torch.equal(chunked(idx), plain(idx))  # no targets: the logits, the same path


def test_gpt_with_the_chunked_loss_compiles_without_a_graph_break():
    model = tiny_model(loss="chunked", loss_chunk=40)
    idx = torch.randint(0, 200, (3, 32))
    model(idx, idx).backward()
    eager = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(idx, idx).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-4, atol=1e-7, msg=name)


def test_bf16_embedding_tables_start_from_the_fp32_draw_and_train():
    fp32, bf16 = tiny_model(), tiny_model(embed_dtype="bf16")
    tables = lambda model: [model.embed, *model.value_embeds]
    assert len(tables(bf16)) == 2  # the token embedding and one value embedding at depth 2
    for a, b in zip(tables(fp32), tables(bf16)):
        assert b.weight.dtype == torch.bfloat16 and torch.equal(b.weight, a.weight.bfloat16())
    assert all(p.dtype == torch.float32 for name, p in bf16.named_parameters() if "embed" not in name)
    idx = torch.randint(0, 200, (3, 32))
    loss = bf16(idx, idx)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(fp32(idx, idx).item(), rel=1e-2)
    config = train_gpt.Config(depth=2, model_dim=32, head_dim=16, seq_len=32, short_window=8, embed_dtype="bf16",
                              device_batch=len(idx))
    optimizer = build_optimizer(bf16, config)  # from here on the parameters are views of its flat buffers
    before = [t.weight.detach().clone() for t in tables(bf16)]
    gradient_dtypes = []
    for table in tables(bf16):
        table.weight.register_post_accumulate_grad_hook(lambda p: gradient_dtypes.append(p.grad.dtype))
    loss, _ = recipe_step(bf16, optimizer, config, idx, idx)  # the recipe's step: its update rules
    assert gradient_dtypes == [torch.bfloat16] * 2
    for table, old in zip(tables(bf16), before):
        assert table.weight.dtype == torch.bfloat16 and torch.isfinite(table.weight).all()
        assert not torch.equal(table.weight, old)
    assert bf16(idx, idx).item() < loss.item()


def test_bad_loss_options_are_refused_early():
    for bad in (dict(loss="fused"), dict(loss="chunked", loss_chunk=0), dict(embed_dtype="fp16")):
        with pytest.raises(ConfigError, match="--loss=|--loss_chunk=|--embed_dtype="):
            check_config(train_gpt.Config(depth=2, **bad), 1)


# -----------------------------------------------------------------------------
# The training loop reads the loss only when it logs it


def test_the_loss_is_read_only_at_log_steps_and_the_windows_sum_to_the_training_time(options, monkeypatch):
    _, every = run(options, run_id="every", steps=7)
    steps_done, syncs = [0], []
    real_step = harness.loop.Trainer.step

    def counted_step(self, step, num_steps):
        steps_done[0] += 1
        return real_step(self, step, num_steps)
    monkeypatch.setattr(harness.loop.Trainer, "step", counted_step)
    monkeypatch.setattr(harness.loop, "synchronize", lambda device: syncs.append(steps_done[0]))
    results, lines = run(options, run_id="sparse", steps=7, log_every=3, warmup_timing_steps=1)
    warmup = 1
    timed_syncs = {count - warmup for count in syncs if count > warmup}
    assert timed_syncs <= {3, 6, 7}  # never between two reads (the validation at step 7 syncs too)
    assert sorted(losses(lines)) == [3, 6, 7]
    assert all(losses(lines)[s] == losses(every)[s] for s in (3, 6, 7))  # the same steps, read later
    steps = [int(l["step"].split("/")[0]) for l in lines if "step_ms" in l]
    window_ms = sum(float(l["step_ms"]) * (s - before) for l, s, before in
                    zip([l for l in lines if "step_ms" in l], steps, [0] + steps[:-1]))
    assert results["training_time_s"] == pytest.approx(window_ms / 1000, rel=1e-3)


def test_a_loss_that_turns_non_finite_between_reads_is_caught_at_the_next_read_naming_its_step(options, tmp_path):
    diverge = dict(matrix_lr=1e30, embed_lr=1e30, head_lr=1e30, scalar_lr=1e30, steps=20)
    messages = {}
    for log_every in (1, 5):
        with pytest.raises(SystemExit) as exc:
            main(argv(options, run_id=f"nan{log_every}", log_every=log_every, **diverge))
        messages[log_every] = str(exc.value.code)
    first_bad = {k: int(re.match(r"error: step (\d+): train loss is (nan|inf)", m).group(1)) for k, m in messages.items()}
    assert first_bad[5] == first_bad[1] < 5, messages  # the same step, found at the read after step 5
    log = (tmp_path / "runs" / "nan5" / "log.txt").read_text()
    assert f"step:{first_bad[5]}/20 train_loss:nan -- stopping: the loss is not finite (read after step 5)" in log
