"""fused_logprob (Triton kernels and the chunked torch path) against the materialised float64 oracle.

Both implementations take fp32 inputs and are compared with `naive_logprob` run in float64 on the
same values: forward log-probs and entropies, and the gradients wrt hidden and weight from a random
combination of both outputs. Shapes are deliberately not multiples of any block size; temperatures
differ from 1; some targets are ignore_index; some vocabulary rows are padding (vocab_size <
V). Tolerance (fp32 vs float64): 1e-5 relative to the largest magnitude of each compared tensor.
On CPU the Triton kernels run in the interpreter (fp32 only: its bf16 `tl.dot` is not faithful);
bf16 runs on a GPU.
"""

import pytest
import torch

from r1mega.kernels import fused_logprob, use_backend
from r1mega.kernels import logprob_torch
from r1mega.kernels.dispatch import resolve_backend
from r1mega.kernels.naive import naive_logprob

FP32_RTOL = 1e-5


def _problem(n, hdim, v, vocab_size, seed, ignore_every=4, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, hdim, generator=g) * 0.7).to(dtype)
    weight = (torch.randn(v, hdim, generator=g) * 0.7).to(dtype)
    targets = torch.randint(0, vocab_size, (n,), generator=g)
    if ignore_every:
        targets[1::ignore_every] = -100
    g_lp = torch.randn(n, generator=g)
    g_ent = torch.randn(n, generator=g)
    return [t.to(device) for t in (hidden, weight, targets, g_lp, g_ent)]


def _run(fn, hidden, weight, targets, g_lp, g_ent, *, entropy, dtype=None, **kw):
    h = hidden.detach().to(dtype or hidden.dtype).requires_grad_()
    w = weight.detach().to(dtype or weight.dtype).requires_grad_()
    out = fn(h, w, targets, return_entropy=entropy, **kw)
    if entropy:
        lp, ent = out
        loss = (lp * g_lp.to(lp.dtype)).sum() + (ent * g_ent.to(ent.dtype)).sum()
    else:
        lp, ent = out, None
        loss = (lp * g_lp.to(lp.dtype)).sum()
    loss.backward()
    return lp.detach(), None if ent is None else ent.detach(), h.grad, w.grad


def _assert_close(actual, expected, rtol, what):
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((actual.double().cpu() - expected.cpu()).abs().max() / scale).item()
    assert err < rtol, f"{what}: max error {err:.2e} relative to max |ref| = {scale.item():.3g} exceeds {rtol:.0e}"


def _compare(backend, device, n, hdim, v, vocab_size, temperature, entropy, seed):
    hidden, weight, targets, g_lp, g_ent = _problem(n, hdim, v, vocab_size, seed, device=device)
    got = _run(fused_logprob, hidden, weight, targets, g_lp, g_ent, entropy=entropy,
               temperature=temperature, vocab_size=vocab_size, backend=backend)
    ref = _run(naive_logprob, hidden.cpu(), weight.cpu(), targets.cpu(), g_lp.cpu(), g_ent.cpu(),
               entropy=entropy, dtype=torch.float64, temperature=temperature, vocab_size=vocab_size)
    names = ("logprob", "entropy", "grad_hidden", "grad_weight")
    for a, e, name in zip(got, ref, names):
        if e is not None:
            _assert_close(a, e, FP32_RTOL, f"{backend} {name}")
    assert torch.all(got[0][targets == -100] == 0) and got[0].dtype == torch.float32
    if entropy:
        assert torch.all(got[1][targets == -100] == 0)
    assert torch.all(got[3][vocab_size:] == 0), "padded vocabulary rows must get zero gradient"


# (N, H, V, vocab_size, temperature, entropy): none are multiples of the interpreter's 16/32 blocks
SHAPES = [
    pytest.param(37, 40, 150, 141, 0.7, True, id="n37-h40-v150-T0.7-ent"),
    pytest.param(70, 48, 301, 301, 1.0, True, id="n70-h48-v301-T1-ent"),
    pytest.param(1, 17, 33, 30, 1.6, True, id="n1-h17-v33-T1.6-ent"),
    pytest.param(45, 33, 97, 90, 1.3, False, id="n45-h33-v97-T1.3-logprob-only"),
]


@pytest.mark.parametrize("n,hdim,v,vocab_size,temperature,entropy", SHAPES)
def test_triton_matches_float64_reference(device, n, hdim, v, vocab_size, temperature, entropy):
    _compare("triton", device, n, hdim, v, vocab_size, temperature, entropy, seed=n)


@pytest.mark.parametrize("n,hdim,v,vocab_size,temperature,entropy", SHAPES)
def test_torch_path_matches_float64_reference(monkeypatch, n, hdim, v, vocab_size, temperature, entropy):
    # small chunks so several token chunks and vocabulary chunks (and their merges) are exercised
    monkeypatch.setattr(logprob_torch, "TOKEN_CHUNK", 16)
    monkeypatch.setattr(logprob_torch, "BLOCK_ELEMENTS", 16 * 40)
    monkeypatch.setattr(logprob_torch, "_MIN_VOCAB_CHUNK", 8)
    _compare("torch", "cpu", n, hdim, v, vocab_size, temperature, entropy, seed=n + 1)


@pytest.mark.parametrize("splits,chunk", [(1, 1000), (5, 32)])
def test_triton_split_and_chunk_settings_agree(device, splits, chunk):
    """One column range vs several (merged in torch); one backward chunk vs several."""
    from r1mega.kernels.logprob_triton import override_tiling

    with override_tiling(splits=splits, bwd_vocab_chunk=chunk):
        _compare("triton", device, 33, 24, 190, 187, 0.9, True, seed=3)


def test_triton_accepts_strided_inputs(device):
    """Non-contiguous hidden (a transposed view) and a weight slice go through the stride arguments."""
    hidden, weight, targets, _, _ = _problem(29, 24, 90, 90, seed=8, device=device)
    h_t = hidden.t().contiguous().t()  # same values, column-major strides
    w_big = torch.zeros(90, 40, device=device)
    w_big[:, 5:29] = weight
    w_view = w_big[:, 5:29]  # row stride 40
    lp, ent = fused_logprob(h_t, w_view, targets, return_entropy=True, backend="triton")
    lp_ref, ent_ref = naive_logprob(hidden.double(), weight.double(), targets, return_entropy=True)
    _assert_close(lp, lp_ref, FP32_RTOL, "strided logprob")
    _assert_close(ent, ent_ref, FP32_RTOL, "strided entropy")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_entropy_gradient_alone(device, backend):
    """Gradient from the entropy output only: checks dH/dz = -p (z - E[z]) / T on its own."""
    dev = "cpu" if backend == "torch" else device
    hidden, weight, targets, _, g_ent = _problem(19, 21, 77, 77, seed=4, device=dev)
    zero = torch.zeros_like(g_ent)
    got = _run(fused_logprob, hidden, weight, targets, zero, g_ent, entropy=True, temperature=0.6, backend=backend)
    ref = _run(naive_logprob, hidden.cpu(), weight.cpu(), targets.cpu(), zero.cpu(), g_ent.cpu(), entropy=True,
               dtype=torch.float64, temperature=0.6)
    _assert_close(got[2], ref[2], FP32_RTOL, "grad_hidden from entropy")
    _assert_close(got[3], ref[3], FP32_RTOL, "grad_weight from entropy")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_targets_ignored_gives_zeros_not_nan(device, backend):
    dev = "cpu" if backend == "torch" else device
    hidden, weight, targets, g_lp, g_ent = _problem(9, 16, 40, 40, seed=2, device=dev)
    targets = torch.full_like(targets, -100)
    lp, ent, gh, gw = _run(fused_logprob, hidden, weight, targets, g_lp, g_ent, entropy=True, backend=backend)
    for t in (lp, ent, gh, gw):
        assert torch.all(t == 0)


def test_torch_path_gradcheck_float64():
    """Finite differences on the chunked torch path itself (float64, chunks forced small)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 3, -100, 9, 8, 2])

    def f(h, w):
        lp, ent = fused_logprob(h, w, t, temperature=0.8, return_entropy=True, vocab_size=10, backend="torch")
        return lp, ent

    saved = logprob_torch.BLOCK_ELEMENTS, logprob_torch._MIN_VOCAB_CHUNK
    logprob_torch.BLOCK_ELEMENTS, logprob_torch._MIN_VOCAB_CHUNK = 12, 2
    try:
        assert torch.autograd.gradcheck(f, (h, w), eps=1e-6, atol=1e-7, rtol=1e-5)
    finally:
        logprob_torch.BLOCK_ELEMENTS, logprob_torch._MIN_VOCAB_CHUNK = saved


def test_torch_path_never_allocates_full_logits(monkeypatch):
    """The CPU path's scratch memory is a few logits blocks, not one [N, V] buffer.

    Measured with torch.profiler's CPU allocator events (peak "Total Allocated" over the call);
    grad_hidden / grad_weight are outputs and are subtracted.
    """
    from r1mega.kernels.bench.memory import cpu_peak_bytes

    monkeypatch.setattr(logprob_torch, "BLOCK_ELEMENTS", 1 << 18)  # 1 MiB fp32 blocks
    n, hdim, v = 1024, 64, 8192  # the logits would be 32 MiB in fp32
    hidden, weight, targets, g_lp, g_ent = _problem(n, hdim, v, v, seed=1)
    h = hidden.requires_grad_()
    w = weight.requires_grad_()

    def fwd_bwd():
        lp, ent = fused_logprob(h, w, targets, return_entropy=True, backend="torch")
        (lp * g_lp + ent * g_ent).sum().backward()

    peak = cpu_peak_bytes(fwd_bwd)
    logits_bytes = n * v * 4
    grads_bytes = (n * hdim + v * hdim) * 4
    assert peak - grads_bytes < 0.1 * logits_bytes, (peak, logits_bytes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 Triton kernels need a CUDA GPU")
def test_bf16_on_gpu_against_float64():
    """bf16 inputs, fp32 accumulation: forward ~1e-4; grads are bf16 outputs of bf16 dlogits (~2e-2)."""
    hidden, weight, targets, g_lp, g_ent = _problem(1000, 256, 5003, 5000, seed=9, device="cuda",
                                                     dtype=torch.bfloat16)
    got = _run(fused_logprob, hidden, weight, targets, g_lp, g_ent, entropy=True, temperature=0.9,
               vocab_size=5000, backend="triton")
    ref = _run(naive_logprob, hidden.cpu(), weight.cpu(), targets.cpu(), g_lp.cpu(), g_ent.cpu(), entropy=True,
               dtype=torch.float64, temperature=0.9, vocab_size=5000)
    for a, e, name, tol in zip(got, ref, ("logprob", "entropy", "grad_hidden", "grad_weight"),
                               (1e-4, 1e-4, 2e-2, 2e-2)):
        _assert_close(a.float(), e, tol, f"bf16 {name}")
    assert got[2].dtype == torch.bfloat16 and got[3].dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the CUDA Triton path with the torch path")
def test_gpu_triton_equals_torch_path_fp32():
    hidden, weight, targets, g_lp, g_ent = _problem(777, 128, 3001, 2990, seed=10, device="cuda")
    a = _run(fused_logprob, hidden, weight, targets, g_lp, g_ent, entropy=True, temperature=1.1,
             vocab_size=2990, backend="triton")
    b = _run(fused_logprob, hidden, weight, targets, g_lp, g_ent, entropy=True, temperature=1.1,
             vocab_size=2990, backend="torch")
    for x, y, name in zip(a, b, ("logprob", "entropy", "grad_hidden", "grad_weight")):
        _assert_close(x, y.double(), 1e-5, name)


# ------------------------------------------------------------------------------------------------
# Contract: validation and dispatch
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_are_named():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="target id 12 is outside"):
        fused_logprob(h, w, torch.tensor([1, 12, 3, 4]))
    with pytest.raises(ValueError, match="target id 9 is outside .*vocab_size=9"):
        fused_logprob(h, w, torch.tensor([1, 9, 3, 4]), vocab_size=9)
    with pytest.raises(ValueError, match="temperature"):
        fused_logprob(h, w, t, temperature=0.0)
    with pytest.raises(ValueError, match="dtypes differ"):
        fused_logprob(h, w.double(), t)
    with pytest.raises(ValueError, match=r"weight must be \[V_local, H\]"):
        fused_logprob(h, torch.randn(10, 7), t)
    with pytest.raises(ValueError, match="vocab_size=11"):
        fused_logprob(h, w, t, vocab_size=11)
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        fused_logprob(h, w, t, backend="cuda")


def test_dispatch_auto_is_torch_on_cpu_and_switch_is_scoped():
    x = torch.zeros(1)
    assert resolve_backend(None, x, "op") == "torch"
    with use_backend("triton"):
        assert resolve_backend(None, x, "op") == "triton"  # allowed here: the interpreter is on
        assert resolve_backend("torch", x, "op") == "torch"  # the per-call choice wins
    assert resolve_backend(None, x, "op") == "torch"


def test_forcing_triton_without_interpreter_on_cpu_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1 is not set"):
        resolve_backend("triton", torch.zeros(1), "fused_logprob")
