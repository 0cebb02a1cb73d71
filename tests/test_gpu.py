"""On a CUDA GPU (skipped without one): train_gpt.py end to end with bf16 autocast and torch.compile.

    .venv/bin/python -m pytest -q -m gpu
    python3 -m pytest -q -m gpu tests/test_gpu.py        # on the bare GPU machine (python -m bench.gpu runs it)

The GPU machine has no rustbpe, so these tests train nothing: their tokenizer is the byte-level one.
"""

import pytest
import torch

import train_gpt
from data.tokenizer import byte_tokenizer, save_tokenizer
from harness import speedups
from tests.test_train import losses, options, run, shards  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """Overrides conftest's trained tokenizer (rustbpe) for this module's shards and options."""
    folder = tmp_path_factory.mktemp("tok") / "bytes"
    save_tokenizer(byte_tokenizer(), str(folder))
    return folder


def test_compiled_bf16_run_on_the_gpu_learns_and_reports_mfu(options, tmp_path):  # noqa: F811
    results, lines = run(options, steps=30, warmup_steps=3, warmup_timing_steps=2, peak_flops=989.5e12,
                         device="cuda")
    train = losses(lines)
    assert results["config"]["compile"] == "auto" and results["environment"]["gpu"]
    assert sum(train[s] for s in (28, 29, 30)) / 3 < train[1] - 0.5
    assert 0 < results["mfu"] < 1 and results["hardware_flops"] > 0


def test_gpu_matches_cpu_for_the_first_steps(options):  # noqa: F811
    _, cpu = run(options, run_id="cpu", steps=3, device="cpu")
    _, gpu = run(options, run_id="gpu", steps=3, device="cuda", compile="false")
    for step, loss in losses(cpu).items():
        assert losses(gpu)[step] == pytest.approx(loss, rel=2e-2)  # bf16 autocast on the GPU


def test_checkpoint_from_the_gpu_loads_with_weights_only(options, tmp_path):  # noqa: F811
    run(options, run_id="ck", steps=2, device="cuda")
    state = torch.load(tmp_path / "runs" / "ck" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["progress"]["step"] == 2 and train_gpt.Config(**{**state["config"], "adam_betas": (0.8, 0.95)})


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs FP8 tensor cores")
def test_fp8_matmul_on_the_gpu_matches_bf16_forward_and_backward():
    """_scaled_mm's layout rules (row-major first operand, column-major second) only bite on CUDA."""
    torch.manual_seed(0)
    x = torch.randn(256, 512, device="cuda", requires_grad=True)
    w = (torch.randn(384, 512, device="cuda") * 0.05).requires_grad_()
    out = speedups.fp8_matmul(x, w)
    grad = torch.randn_like(out, dtype=torch.float32)
    out.float().backward(grad)
    xr, wr = x.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    (xr @ wr.t()).float().backward(grad)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    assert rel(out, xr @ wr.t()) < 0.05 and rel(x.grad, xr.grad) < 0.08 and rel(w.grad, wr.grad) < 0.08


def test_fp8_run_on_the_gpu_learns(options):  # noqa: F811
    results, lines = run(options, run_id="fp8gpu", steps=30, warmup_steps=3, device="cuda", fp8="true",
                         model_dim=64, head_dim=32, device_batch=16, total_batch_tokens=1024)
    train = losses(lines)
    assert sum(train[s] for s in (28, 29, 30)) / 3 < train[1] - 0.5
