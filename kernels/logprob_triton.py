"""Triton kernels for the fused log-prob: forward statistics, backward logit gradients, GEMMs.

Forward, `_logprob_stats_kernel` (one launch): a [BLOCK_N tokens, BLOCK_V vocab] tile of logits
x = h W^T is accumulated over H in fp32 registers (`tl.dot`), scaled by 1/T and folded into a
running (max m, s = sum e^(z-m), u = sum e^(z-m)(z-m), target logit) per token -- an online
log-sum-exp (Milakov & Gimelshein 2018) -- so the logits never leave registers. The vocabulary is
cut into `splits` column ranges run by different programs (more programs than SMs at small N);
their partial statistics ([4, splits, N], fp32) are merged in torch.

Backward: the logits are recomputed, never stored. For each vocabulary chunk of `bwd_vocab_chunk`
columns, `_logprob_dlogits_kernel` recomputes the tile and writes
dL/dx = (1/T) [g_lp (1[j=t] - p) - g_H p (z - E[z])] into a [N, chunk] buffer (input dtype), then
two GEMMs (`_matmul_kernel`, fp32 accumulation) consume it:
grad_h (fp32 [N, H]) += dx @ W_chunk and grad_w[chunk] = dx^T @ h (the sum over all N tokens runs
inside one GEMM's fp32 accumulator, so grad_w is never accumulated in bf16 across chunks).

Tiling is `LogprobTiling`; `default_tiling` explains the GPU choice and `override_tiling` lets
benchmarks sweep it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl

from r1mega.kernels._triton_util import check_launchable

__all__ = [
    "LogprobTiling",
    "default_tiling",
    "override_tiling",
    "forward_stats",
    "backward",
    "matmul",
]


# ------------------------------------------------------------------------------------------------
# Tiling
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogprobTiling:
    block_n: int
    """Tokens per tile (rows of the logits tile)."""
    block_v: int
    """Vocabulary columns per tile."""
    block_h: int
    """Hidden-dim slice per `tl.dot` step (the K step of the tile's GEMM)."""
    num_warps: int
    num_stages: int
    splits: Optional[int]
    """Column ranges of the forward; None = enough to give every SM two programs."""
    bwd_vocab_chunk: int
    """Columns per backward chunk: the [N, chunk] dlogits buffer and the K of the grad_h GEMM."""
    mm_block_m: int
    mm_block_n: int
    mm_block_k: int
    mm_group_m: int
    """Programs along M that share a column of B tiles in L2 (grouped launch order)."""


def default_tiling(device: torch.device, dtype: torch.dtype) -> LogprobTiling:
    """Tile sizes for `device`.

    GPU (H100/H200, bf16): the logits tile is the accumulator of a GEMM with K = H, so the standard
    Hopper Triton GEMM shape applies: 128 x 128 x 64 with 8 warps keeps the fp32 accumulator at 64
    registers/thread, leaving room for the exp/max epilogue without spills (128 x 256 doubles that
    and spills once the epilogue's temporaries are live); 3 stages fit 3 x (128 + 128) x 64 x 2 B =
    96 KiB of shared memory. fp32 inputs use IEEE dots (no TF32) and a 64 x 64 x 32 tile, which fits
    the shared memory at 4 bytes an element. The backward chunk of 2048 columns makes the grad_h
    GEMM compute-bound: each chunk reads and writes the fp32 [N, H] accumulator once (8 B/element)
    for 2 * 2048 flops/element, 512 flop/B against the H100's ~295 flop/B ridge; its dlogits
    buffer is N x 2048 x 2 B (1.3% of the materialised bf16 logits at V = 151936).
    These are reasoned starting points, not yet confirmed by a GPU sweep (`python -m
    r1mega.kernels.bench logprob --sweep` runs one).

    Interpreter (CPU tests): small tiles, because each program runs as numpy calls; several tiles
    per dimension still exercise every loop and boundary mask.
    """
    if device.type != "cuda":
        return LogprobTiling(
            block_n=16, block_v=32, block_h=16, num_warps=1, num_stages=1, splits=None,
            bwd_vocab_chunk=64, mm_block_m=16, mm_block_n=32, mm_block_k=16, mm_group_m=2,
        )
    if dtype == torch.float32:
        return LogprobTiling(
            block_n=64, block_v=64, block_h=32, num_warps=4, num_stages=2, splits=None,
            bwd_vocab_chunk=2048, mm_block_m=64, mm_block_n=64, mm_block_k=32, mm_group_m=8,
        )
    return LogprobTiling(
        block_n=128, block_v=128, block_h=64, num_warps=8, num_stages=3, splits=None,
        bwd_vocab_chunk=2048, mm_block_m=128, mm_block_n=128, mm_block_k=64, mm_group_m=8,
    )


_override: dict[str, object] = {}


@contextlib.contextmanager
def override_tiling(**fields: object) -> Iterator[None]:
    """Temporarily replace fields of the default tiling (benchmarks, tests)."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(LogprobTiling)}
    if unknown:
        raise ValueError(f"override_tiling: unknown field(s) {sorted(unknown)}")
    saved = dict(_override)
    _override.update(fields)
    try:
        yield
    finally:
        _override.clear()
        _override.update(saved)


def _tiling(device: torch.device, dtype: torch.dtype) -> LogprobTiling:
    base = default_tiling(device, dtype)
    return dataclasses.replace(base, **_override) if _override else base


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products ("ieee"), not TF32's 10-bit mantissa.
    return "ieee" if dtype == torch.float32 else "tf32"


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few splits, so the split merge is exercised


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, rows64, row_ok, cols64, col_ok, H,
    stride_hn, stride_hh, stride_wv, stride_wh,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """x = h[rows] . W[cols]^T for one [BLOCK_N, BLOCK_V] tile: fp32 accumulator, K-loop over H.

    Forward and backward recompute logits with this same loop, so both see identical values.
    """
    ks0 = tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + ks0
        k_ok = ks < H
        a = tl.load(
            h_ptr + rows64[:, None] * stride_hn + ks[None, :] * stride_hh,
            mask=row_ok[:, None] & k_ok[None, :], other=0.0,
        )
        b = tl.load(
            w_ptr + cols64[None, :] * stride_wv + ks[:, None] * stride_wh,
            mask=col_ok[None, :] & k_ok[:, None], other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _logprob_stats_kernel(
    h_ptr, w_ptr, tgt_ptr, out_ptr,
    N, V, H,
    stride_hn, stride_hh, stride_wv, stride_wh,
    inv_temp, tiles_per_split,
    WITH_ENTROPY: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Partial online-LSE statistics of one token tile over one column range.

    out[0/1/2/3, split, n] = m, s = sum_j e^(z_j - m), u = sum_j e^(z_j - m) (z_j - m), z_target,
    with z_j = (h_n . w_j) / T over the split's columns j < V.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    u = tl.zeros([BLOCK_N], tl.float32)
    zt = tl.zeros([BLOCK_N], tl.float32)
    num_tiles = tl.cdiv(V, BLOCK_V)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, num_tiles)
    for vt in range(t_begin, t_end):
        cols = vt * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        cols64 = cols.to(tl.int64)
        acc = _logits_tile(
            h_ptr, w_ptr, rows64, row_ok, cols64, col_ok, H, stride_hn, stride_hh, stride_wv, stride_wh,
            BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
        )
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))  # [BLOCK_N, BLOCK_V]
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every tile has a valid column
        delta = m - m_new  # -inf on the first tile, where s = 0
        alpha = tl.exp(delta)
        d = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
        p = tl.where(col_ok[None, :], tl.exp(d), 0.0)
        if WITH_ENTROPY:
            shift = tl.where(s > 0, delta, 0.0)  # s = 0 on the first tile: avoid -inf * 0
            u = alpha * (u + shift * s) + tl.sum(p * d, axis=1)
        s = alpha * s + tl.sum(p, axis=1)
        m = m_new
    base = pid_s * N + rows
    stride_stat = num_splits * N
    tl.store(out_ptr + base, m, mask=row_ok)
    tl.store(out_ptr + stride_stat + base, s, mask=row_ok)
    tl.store(out_ptr + 2 * stride_stat + base, u, mask=row_ok)
    tl.store(out_ptr + 3 * stride_stat + base, zt, mask=row_ok)


@triton.jit
def _logprob_dlogits_kernel(
    h_ptr, w_ptr, tgt_ptr, lse_ptr, ez_ptr, glp_ptr, gent_ptr, dx_ptr,
    N, C, H, col0,
    stride_hn, stride_hh, stride_wv, stride_wh, stride_dn, stride_dv,
    inv_temp,
    WITH_ENTROPY: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dL/dx for one [BLOCK_N, BLOCK_V] tile of the chunk whose first local column is col0.

    p = e^(z - lse); dL/dz = g_lp (1[j = t] - p) - g_H p (z - E[z]); dL/dx = dL/dz / T.
    `w_ptr` points at the chunk's first row; C is the chunk's column count.
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < C
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    acc = _logits_tile(
        h_ptr, w_ptr, rows64, row_ok, cols64, col_ok, H, stride_hn, stride_hh, stride_wv, stride_wh,
        BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
    )
    z = acc * inv_temp
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(glp_ptr + rows, mask=row_ok, other=0.0)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1) - col0
    p = tl.where(col_ok[None, :], tl.exp(z - lse[:, None]), 0.0)
    coef = g_lp[:, None] + tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    if WITH_ENTROPY:
        ez = tl.load(ez_ptr + rows, mask=row_ok, other=0.0)
        g_ent = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
        coef += g_ent[:, None] * (z - ez[:, None])
    dz = tl.where(cols[None, :] == tgt[:, None], g_lp[:, None], 0.0) - p * coef
    dx = dz * inv_temp
    tl.store(
        dx_ptr + rows64[:, None] * stride_dn + cols64[None, :] * stride_dv,
        dx.to(dx_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """C (+)= A @ B with an fp32 accumulator; ACCUMULATE adds into C's current values.

    Strides make transposed operands free. Programs are launched in groups of GROUP_M rows so
    consecutive programs reuse the same B tiles from L2.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_rows
    pid_n = (pid % width) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk0 = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    c_ptrs = c_ptr + rm64[:, None] * stride_cm + rn64[None, :] * stride_cn
    c_mask = m_ok[:, None] & n_ok[None, :]
    if ACCUMULATE:
        acc = tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + rk0
        k_ok = rk < K
        rk64 = rk.to(tl.int64)
        a = tl.load(a_ptr + rm64[:, None] * stride_am + rk64[None, :] * stride_ak,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + rk64[:, None] * stride_bk + rn64[None, :] * stride_bn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def matmul(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, accumulate: bool, tiling: LogprobTiling) -> None:
    """c (+)= a @ b in place: a [M, K], b [K, N], c [M, N]; any strides, fp32 accumulation."""
    m, k = a.shape
    k2, n = b.shape
    assert k == k2 and c.shape == (m, n), (a.shape, b.shape, c.shape)
    if m == 0 or n == 0:
        return
    if k == 0:
        if not accumulate:
            c.zero_()
        return
    grid = (triton.cdiv(m, tiling.mm_block_m) * triton.cdiv(n, tiling.mm_block_n),)
    _matmul_kernel[grid](
        a, b, c, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        ACCUMULATE=accumulate,
        BLOCK_M=tiling.mm_block_m, BLOCK_N=tiling.mm_block_n, BLOCK_K=tiling.mm_block_k,
        GROUP_M=tiling.mm_group_m, DOT_PRECISION=_dot_precision(a.dtype),
        num_warps=tiling.num_warps, num_stages=tiling.num_stages,
    )


def forward_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    t_local: torch.Tensor,
    valid: torch.Tensor,
    *,
    inv_temp: float,
    n_cols: int,
    need_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Per-token (m, s, u, zt) over local columns [0, n_cols) -- one kernel launch + a merge.

    `valid` is unused: every row is computed (masked rows cost the same as real ones; pack
    sequences rather than pad them).
    """
    from r1mega.kernels.vocab_parallel import merge_split_stats

    check_launchable(hidden, _logprob_stats_kernel)
    n, hdim = hidden.shape
    dev = hidden.device
    if n_cols == 0 or n == 0:
        m = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
        zeros = torch.zeros(n, dtype=torch.float32, device=dev)
        return m, zeros, (zeros.clone() if need_entropy else None), zeros.clone()
    tl_cfg = _tiling(dev, hidden.dtype)
    n_tiles_n = triton.cdiv(n, tl_cfg.block_n)
    n_tiles_v = triton.cdiv(n_cols, tl_cfg.block_v)
    splits = tl_cfg.splits or max(1, triton.cdiv(2 * _num_sms(dev), n_tiles_n))
    splits = min(splits, n_tiles_v)
    tiles_per_split = triton.cdiv(n_tiles_v, splits)
    splits = triton.cdiv(n_tiles_v, tiles_per_split)  # no empty split
    out = torch.empty((4, splits, n), dtype=torch.float32, device=dev)
    _logprob_stats_kernel[(n_tiles_n, splits)](
        hidden, weight, t_local, out,
        n, n_cols, hdim,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        float(inv_temp), tiles_per_split,
        WITH_ENTROPY=need_entropy,
        BLOCK_N=tl_cfg.block_n, BLOCK_V=tl_cfg.block_v, BLOCK_H=tl_cfg.block_h,
        DOT_PRECISION=_dot_precision(hidden.dtype),
        num_warps=tl_cfg.num_warps, num_stages=tl_cfg.num_stages,
    )
    if splits == 1:
        return out[0, 0], out[1, 0], (out[2, 0] if need_entropy else None), out[3, 0]
    return merge_split_stats(out[0], out[1], out[2] if need_entropy else None, out[3])


def backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    t_local: torch.Tensor,
    valid: torch.Tensor,
    lse: torch.Tensor,
    ez: Optional[torch.Tensor],
    g_lp: torch.Tensor,
    g_ent: Optional[torch.Tensor],
    *,
    inv_temp: float,
    n_cols: int,
    need_grad_h: bool,
    need_grad_w: bool,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Local (grad_hidden fp32 [N, H], grad_weight in weight's dtype); see the module docstring."""
    check_launchable(hidden, _logprob_stats_kernel)
    n, hdim = hidden.shape
    dev = hidden.device
    grad_h = torch.zeros((n, hdim), dtype=torch.float32, device=dev) if need_grad_h else None
    grad_w = None
    if need_grad_w:
        grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format)
        grad_w[n_cols:].zero_()  # padded rows are not tokens: zero gradient
    if n == 0 or n_cols == 0 or not (need_grad_h or need_grad_w):
        if grad_w is not None:
            grad_w.zero_()
        return grad_h, grad_w
    tl_cfg = _tiling(dev, hidden.dtype)
    with_entropy = g_ent is not None
    chunk = min(tl_cfg.bwd_vocab_chunk, n_cols)
    dx = torch.empty((n, chunk), dtype=hidden.dtype, device=dev)  # [tokens, chunk] dlogits
    lse = lse.contiguous()
    ez_arg = ez.contiguous() if with_entropy else lse
    gent_arg = g_ent.contiguous() if with_entropy else g_lp
    for c0 in range(0, n_cols, chunk):
        c = min(chunk, n_cols - c0)
        w_chunk = weight[c0 : c0 + c]  # [c, H]
        dx_c = dx[:, :c]
        grid = (triton.cdiv(n, tl_cfg.block_n), triton.cdiv(c, tl_cfg.block_v))
        _logprob_dlogits_kernel[grid](
            hidden, w_chunk, t_local, lse, ez_arg, g_lp, gent_arg, dx_c,
            n, c, hdim, c0,
            hidden.stride(0), hidden.stride(1), w_chunk.stride(0), w_chunk.stride(1),
            dx_c.stride(0), dx_c.stride(1),
            float(inv_temp),
            WITH_ENTROPY=with_entropy,
            BLOCK_N=tl_cfg.block_n, BLOCK_V=tl_cfg.block_v, BLOCK_H=tl_cfg.block_h,
            DOT_PRECISION=_dot_precision(hidden.dtype),
            num_warps=tl_cfg.num_warps, num_stages=tl_cfg.num_stages,
        )
        if need_grad_h:
            matmul(dx_c, w_chunk, grad_h, accumulate=True, tiling=tl_cfg)  # [N, H] += [N, c] @ [c, H]
        if need_grad_w:
            matmul(dx_c.t(), hidden, grad_w[c0 : c0 + c], accumulate=False, tiling=tl_cfg)  # [c, H]
    return grad_h, grad_w
