"""FP8 matmuls (harness/speedups.py) on the CPU: the quantization numerics, the autograd wiring, what backward keeps, no
graph break under compile, and a tiny run that learns like full precision.

torch 2.13 has a CPU torch._scaled_mm (it accepts layouts CUDA rejects: the layout rules are checked by the GPU
tests); where a torch has none, speedups.scaled_mm_reference stands in, quantizing exactly as the GPU path does.
Both are tested here. Tolerances: e4m3 keeps 3 mantissa bits (relative rounding error at most 2^-4 an element,
a few % on a matmul); e5m2 gradients keep 2 (at most 2^-3 an element).
"""

import pytest
import torch
import torch.nn.functional as F

import train_gpt
from harness import speedups
from harness.device import enable_fp8
from harness.speedups import E4M3, E5M2
from tests.test_train import losses, options, run, shards  # noqa: F401  (fixtures)

both_paths = pytest.mark.parametrize("emulated", [False, True], ids=["scaled_mm", "emulated"])


@pytest.fixture
def path(emulated, monkeypatch):
    if not emulated and not speedups.CPU_HAS_SCALED_MM:
        pytest.skip("this torch has no CPU torch._scaled_mm")
    monkeypatch.setattr(speedups, "CPU_HAS_SCALED_MM", not emulated)


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.skipif(not speedups.CPU_HAS_SCALED_MM, reason="this torch has no CPU torch._scaled_mm")
def test_the_emulation_computes_what_scaled_mm_computes():
    torch.manual_seed(0)
    a, b = torch.randn(48, 64), torch.randn(32, 64)
    a_scale, b_scale = speedups.fp8_scale(a, E5M2), speedups.fp8_scale(b, E4M3)
    a8, b8 = speedups.to_fp8(a, E5M2, a_scale), speedups.to_fp8(b, E4M3, b_scale)
    for out_dtype in (torch.float32, torch.bfloat16):
        real = torch._scaled_mm(a8, b8.t(), scale_a=a_scale, scale_b=b_scale, out_dtype=out_dtype)
        emulated = speedups.scaled_mm_reference(a8, b8.t(), a_scale, b_scale, out_dtype)
        assert real.dtype == emulated.dtype == out_dtype
        torch.testing.assert_close(real, emulated, rtol=1e-5 if out_dtype == torch.float32 else 1e-2, atol=1e-5)


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_quantization_rounds_to_the_nearest_fp8_value_and_saturates(dtype):
    torch.manual_seed(0)
    x = torch.randn(4096) * torch.logspace(-8, 2, 4096)  # into both formats' subnormals
    scale = speedups.fp8_scale(x, dtype)
    assert scale.dtype == torch.float32 and scale.ndim == 0
    assert speedups.to_fp8(x, dtype, scale).float().abs().max() == torch.finfo(dtype).max  # amax -> the largest
    back = speedups.to_fp8(x, dtype, scale).float() * scale
    normal = x.abs() >= torch.finfo(dtype).tiny * scale  # below that, subnormals: absolute, not relative, error
    mantissa_bits = {E4M3: 3, E5M2: 2}[dtype]
    assert ((back - x).abs() / x.abs())[normal].max() <= 2.0 ** -(mantissa_bits + 1)
    assert ((back - x).abs())[~normal].max() <= torch.finfo(dtype).tiny * scale
    # a scale too small for the tensor (a bound that does not hold) saturates: the largest value, not inf or NaN
    clipped = speedups.to_fp8(x, dtype, scale / 100).float()
    assert torch.isfinite(clipped).all() and clipped.abs().max() == torch.finfo(dtype).max


def test_the_fixed_bound_of_rms_normed_inputs_holds_even_for_the_worst_vector():
    n = 768
    spike = torch.zeros(3, n)
    spike[0, 5] = 1.0                                     # all of the norm in one element: exactly sqrt(n)
    spike[1] = torch.randn(n)
    spike[2] = torch.randn(n) * torch.logspace(-3, 3, n)  # heavy outliers
    normed = train_gpt.rms_norm(spike)
    assert normed.abs().max() <= n ** 0.5 * (1 + 1e-6)
    scale = speedups.fp8_scale(normed, E4M3, bound=n ** 0.5)
    assert (normed / scale).abs().max() <= torch.finfo(E4M3).max * (1 + 1e-6)
    assert speedups.to_fp8(normed, E4M3, scale)[0, 5].float() == torch.finfo(E4M3).max


def test_the_head_gradient_of_the_mean_loss_is_within_one_over_rows():
    """The fixed gradient scale of mean_loss_head: |d loss / d head output| <= 1 / rows, even with confident,
    saturated logits (there the soft-cap's derivative shrinks it further)."""
    torch.manual_seed(0)
    config = train_gpt.Config(depth=1, model_dim=32, head_dim=16, seq_len=16, short_window=8)
    model = train_gpt.GPT(config, vocab_size=100)
    heads = [m for m in model.modules() if getattr(m, "mean_loss_head", False)]  # what claims the bound
    if not heads:
        pytest.skip("the recipe has no Linear marked mean_loss_head (a tied head uses no FP8 head scale)")
    grads = []
    heads[0].register_full_backward_hook(lambda module, grad_in, grad_out: grads.append(grad_out[0]))
    idx = torch.randint(0, 100, (4, 16))
    for head_std in (0.001, 1.0, 100.0):
        torch.nn.init.normal_(heads[0].weight, std=head_std)
        model(idx, idx).backward()
        rows = idx.numel()
        assert 0 < grads[-1].abs().max() * rows <= 1.0, head_std


@both_paths
def test_fp8_matmul_forward_and_backward_are_close_to_full_precision(emulated, path):
    torch.manual_seed(0)
    x = torch.randn(64, 128, requires_grad=True)
    w = (torch.randn(96, 128) * 0.05).requires_grad_()
    out = speedups.fp8_matmul(x, w)
    assert out.dtype == torch.float32 and out.shape == (64, 96)
    grad = torch.randn(64, 96)
    out.backward(grad)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (x_ref @ w_ref.t()).backward(grad)
    assert relative_error(out, x_ref @ w_ref.t()) < 0.05   # e4m3: 3 mantissa bits per operand
    assert relative_error(x.grad, x_ref.grad) < 0.08       # e5m2 gradients: 2 mantissa bits
    assert relative_error(w.grad, w_ref.grad) < 0.08
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    assert speedups.fp8_matmul(x.bfloat16(), w, out_dtype=torch.bfloat16).dtype == torch.bfloat16


@both_paths
def test_fixed_scales_give_the_same_precision_as_dynamic_ones(emulated, path):
    """rms-normed input with the sqrt(n) bound, and a mean-loss-like gradient with the 1 / rows bound."""
    torch.manual_seed(0)
    x = train_gpt.rms_norm(torch.randn(64, 128)).requires_grad_()
    w = (torch.randn(96, 128) * 0.05).requires_grad_()
    grad = (torch.softmax(torch.randn(64, 96), -1) - F.one_hot(torch.arange(64) % 96, 96)) / 64
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    reference = x_ref @ w_ref.t()
    reference.backward(grad)
    out = speedups.fp8_matmul(x, w, x_bound=128 ** 0.5, grad_bound=1 / 64)
    out.backward(grad)
    assert relative_error(out, reference) < 0.05
    assert relative_error(x.grad, x_ref.grad) < 0.08 and relative_error(w.grad, w_ref.grad) < 0.08


def test_scaling_keeps_tiny_and_huge_tensors_in_range():
    for magnitude in (1e-6, 1.0, 1e4):
        x = torch.randn(32, 64) * magnitude
        w = torch.randn(48, 64) * magnitude
        assert relative_error(speedups.fp8_matmul(x, w), x @ w.t()) < 0.05, magnitude


def test_backward_keeps_fp8_copies_not_the_inputs():
    saved = []
    x = torch.randn(64, 128, requires_grad=True)
    w = torch.randn(96, 128, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        speedups.fp8_matmul(x, w, x_bound=128 ** 0.5)
    big = [t for t in saved if t.ndim > 0]
    assert sorted(t.shape for t in big) == [(64, 128), (96, 128)] and all(t.dtype == E4M3 for t in big)
    assert all(t.dtype == torch.float32 for t in saved if t.ndim == 0)  # and the two scales


def test_linear_uses_fp8_only_while_training():
    torch.manual_seed(0)
    layer = train_gpt.Linear(64, 32, normed_input=True)
    x = train_gpt.rms_norm(torch.randn(4, 8, 64))
    reference = F.linear(x, layer.weight)
    layer.use_fp8 = True
    fp8_out = layer(x)
    assert fp8_out.shape == (4, 8, 32) and fp8_out.dtype == x.dtype  # as a Linear's output would be
    assert 0 < relative_error(fp8_out, reference) < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # the autocast dtype, as F.linear's would be
    layer.eval()
    assert torch.equal(layer(x), reference)  # evaluation runs the same weights without FP8


def tiny_fp8_model():
    torch.manual_seed(0)
    config = train_gpt.Config(depth=2, model_dim=32, head_dim=16, seq_len=32, short_window=8)
    model = train_gpt.GPT(config, vocab_size=200)
    for block in model.blocks:  # non-zero output projections, so that every Linear gets a gradient
        torch.nn.init.normal_(block.attn.proj.weight, std=0.05)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.05)
    enable_fp8(model, torch.device("cpu"))
    return model


def test_a_model_with_fp8_compiles_without_a_graph_break_and_matches_eager():
    model = tiny_fp8_model()
    idx = torch.randint(0, 200, (2, 32))
    model(idx, idx).backward()
    eager = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break is an error
    loss = compiled(idx, idx)
    loss.backward()
    assert loss.item() == pytest.approx(model(idx, idx).item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_tiny_run_with_fp8_learns_like_full_precision(options):  # noqa: F811
    """12 steps on the synthetic corpus: FP8 lowers the loss as much as fp32 does, within 5% at step 12."""
    _, plain = run(options, run_id="plain", steps=12)
    _, fp8 = run(options, run_id="fp8", steps=12, fp8="true")
    assert losses(fp8)[12] < losses(fp8)[1] - 0.3
    assert losses(fp8)[12] == pytest.approx(losses(plain)[12], rel=0.05)


def test_dynamic_fp8_scales_take_every_scale_from_its_tensors_amax(monkeypatch):
    """--fp8_scales=dynamic (gpt2-core's, as nanochat's tensorwise recipe): no Linear keeps a fixed bound, so every
    scale an FP8 matmul asks for comes from its tensor's amax; with bounds, the normed inputs and the head's gradient
    get fixed ones. The model compiles and trains as before."""
    asked = []
    real = speedups.fp8_scale
    monkeypatch.setattr(speedups, "fp8_scale", lambda t, dtype, bound=None: asked.append(bound) or real(t, dtype, bound))
    for scales in ("bounds", "dynamic"):
        torch.manual_seed(0)
        config = train_gpt.Config(depth=2, model_dim=32, head_dim=16, seq_len=32, short_window=8, fp8_scales=scales)
        model = train_gpt.GPT(config, vocab_size=200)
        enable_fp8(model, torch.device("cpu"))
        asked.clear()
        idx = torch.randint(0, 200, (2, 32))
        model(idx, idx).backward()
        fixed = [bound for bound in asked if bound is not None]
        assert (len(fixed) > 0) == (scales == "bounds") and len(asked) > 0, scales


def test_fp8_split_qkv_quantizes_q_k_and_v_with_scales_of_their_own(monkeypatch):
    """--fp8_split_qkv (gpt2-core's, as nanochat's three Linears): the fused qkv matrix's FP8 matmul is three, each
    part's weight scaled by its own amax, their outputs in qkv's order; without it, one scale for the whole matrix."""
    torch.manual_seed(0)
    layer = train_gpt.Linear(32, 96)
    with torch.no_grad():
        layer.weight[64:] *= 100  # v far larger than q and k
    x = torch.randn(2, 8, 32)
    reference = F.linear(x, layer.weight)
    weight_scales = []
    real = speedups.fp8_scale
    monkeypatch.setattr(speedups, "fp8_scale", lambda t, dtype, bound=None: (
        weight_scales.append((tuple(t.shape), t.detach().abs().amax().item())) if t.dim() == 2 and t.size(-1) == 32
        and t.size(0) in (32, 96) and t.requires_grad else None) or real(t, dtype, bound))
    layer.use_fp8 = True
    layer(x)
    assert weight_scales == [((96, 32), layer.weight.abs().amax().item())]
    weight_scales.clear()
    layer.fp8_parts = 3
    apart = layer(x)
    assert weight_scales == [((32, 32), part.abs().amax().item()) for part in layer.weight.detach().chunk(3)]
    for part in range(3):
        cols = slice(32 * part, 32 * (part + 1))
        assert relative_error(apart[..., cols], reference[..., cols]) < 0.05, part
    model = train_gpt.GPT(train_gpt.Config(depth=2, model_dim=32, head_dim=16, seq_len=32, fp8_split_qkv=True), 200)
    assert {block.attn.qkv.fp8_parts for block in model.blocks} == {3}
