"""FP8 matmuls on the CPU (torch._scaled_mm runs here, though it accepts layouts CUDA rejects: the layout rules
are checked by the GPU tests): numerics against full precision, eval in bf16, no graph break under compile."""

import pytest
import torch

import train_gpt
from tests.test_train import losses, options, run, shards  # noqa: F401  (fixtures)


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_fp8_matmul_forward_and_backward_are_close_to_full_precision():
    torch.manual_seed(0)
    x = torch.randn(64, 128, requires_grad=True)
    w = (torch.randn(96, 128) * 0.05).requires_grad_()
    out = train_gpt.fp8_matmul(x, w)
    assert out.dtype == torch.bfloat16 and out.shape == (64, 96)
    grad = torch.randn(64, 96)
    out.float().backward(grad)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (x_ref @ w_ref.t()).backward(grad)
    assert relative_error(out, x_ref @ w_ref.t()) < 0.05   # e4m3: 3 mantissa bits per operand
    assert relative_error(x.grad, x_ref.grad) < 0.08       # e5m2 gradients: 2 mantissa bits
    assert relative_error(w.grad, w_ref.grad) < 0.08
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype


def test_scaling_keeps_tiny_and_huge_tensors_in_range():
    for magnitude in (1e-6, 1.0, 1e4):
        x = torch.randn(32, 64) * magnitude
        w = torch.randn(48, 64) * magnitude
        assert relative_error(train_gpt.fp8_matmul(x, w), x @ w.t()) < 0.05, magnitude


def test_linear_uses_fp8_only_while_training():
    torch.manual_seed(0)
    layer = train_gpt.Linear(64, 32)
    x = torch.randn(4, 8, 64)
    reference = torch.nn.functional.linear(x, layer.weight)
    layer.use_fp8 = True
    fp8_out = layer(x)
    assert fp8_out.shape == (4, 8, 32) and fp8_out.dtype == x.dtype  # as a Linear's output would be
    assert 0 < relative_error(fp8_out, reference) < 0.05
    layer.eval()
    assert torch.equal(layer(x), reference)  # evaluation runs the same weights without FP8


def test_fp8_ops_compile_without_a_graph_break():
    def step(x, w):
        out = train_gpt.fp8_matmul(x, w)
        out.float().square().sum().backward()
        return out
    x, w = torch.randn(32, 64, requires_grad=True), torch.randn(48, 64, requires_grad=True)
    eager = step(x, w)
    torch._dynamo.reset()
    compiled = torch.compile(train_gpt.fp8_matmul, fullgraph=True)  # fullgraph: any graph break is an error
    assert torch.allclose(compiled(x, w).float(), eager.float())


def test_a_tiny_run_with_fp8_learns_like_bf16(options):
    _, plain = run(options, run_id="plain", steps=12)
    _, fp8 = run(options, run_id="fp8", steps=12, fp8="true")
    assert losses(fp8)[12] < losses(fp8)[1] - 0.3
    assert losses(fp8)[12] == pytest.approx(losses(plain)[12], rel=0.05)
