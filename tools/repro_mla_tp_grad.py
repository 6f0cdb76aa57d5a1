"""Minimal reproduction: MLA's k_pos_emb gradient is wrong at TP>1 when linear_kv_down_proj is a
ColumnParallelLinear (megatron-core's local spec). See docs/mla_tp_grad_bug.md.

One MLASelfAttention layer, same weights and input at TP=1 and TP=2; prints the relative error of
the TP=2 gradient of linear_kv_down_proj.weight, split into its latent rows and its rope rows, with
and without the fix in r1mega.parallel.megatron_fixes. Runs on CPU (gloo, via r1mega's CPU support) or GPU:

    torchrun --nproc-per-node 2 tools/repro_mla_tp_grad.py
    python tools/repro_mla_tp_grad.py            # spawns the 2 CPU processes itself
"""

from __future__ import annotations

import os

import torch

HIDDEN, HEADS, Q_LORA, KV_LORA, NOPE, ROPE, V, SEQ, BATCH = 64, 4, 32, 32, 16, 8, 16, 12, 2


def _attention(tp: int):
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    from r1mega.models.cpu_spec import SDPACoreAttention

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    config = MLATransformerConfig(
        num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS, tensor_model_parallel_size=tp,
        q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_head_dim=NOPE, qk_pos_emb_head_dim=ROPE,
        v_head_dim=V, rope_type="rope", add_bias_linear=False, normalization="RMSNorm",
        attention_dropout=0.0, hidden_dropout=0.0,
    )
    spec = get_gpt_layer_local_spec(multi_latent_attention=True).submodules.self_attention
    spec.submodules.core_attention = SDPACoreAttention  # local DotProductAttention: one head dim only
    return build_module(spec, config=config, layer_number=1)


def _rank_tp_slice(full: torch.Tensor, part: torch.Tensor, dim: int) -> torch.Tensor:
    from megatron.core import parallel_state

    if full.shape == part.shape:
        return full
    rank, n = parallel_state.get_tensor_model_parallel_rank(), part.shape[dim]
    return full.narrow(dim, rank * n, n)


def main() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from r1mega.parallel import cpu, megatron_fixes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        cpu.enable_cpu_support()
    else:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen).to(device)

    ref = _attention(tp=1).to(device)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    ref(x, None)[0].square().sum().backward()
    weights = {n: p.detach().clone() for n, p in ref.named_parameters()}
    want = ref.linear_kv_down_proj.weight.grad
    parallel_state.destroy_model_parallel()

    for fix in (False, True):
        attn = _attention(tp=2).to(device)
        with torch.no_grad():
            for n, p in attn.named_parameters():
                p.copy_(_rank_tp_slice(weights[n], p, getattr(p, "partition_dim", 0)))
        with megatron_fixes.mla_rope_grad_fix(fix):
            attn(x, None)[0].square().sum().backward()
        # gather the TP-split weight grad: [kv_lora + rope, hidden]
        parts = [torch.empty_like(attn.linear_kv_down_proj.weight.grad) for _ in range(2)]
        dist.all_gather(parts, attn.linear_kv_down_proj.weight.grad.contiguous())
        got = torch.cat(parts)
        if dist.get_rank() == 0:
            for rows, what in ((slice(0, KV_LORA), "latent rows"), (slice(KV_LORA, None), "rope rows")):
                err = ((got[rows] - want[rows]).abs().max() / want[rows].abs().max()).item()
                print(f"fix={'on ' if fix else 'off'}  linear_kv_down_proj.weight {what:11s}: rel err {err:.2e}")
        del attn
        parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":  # spawned processes re-import this file: keep the guard
    if "RANK" in os.environ:
        main()
    else:
        from r1mega.parallel.launch import run_distributed

        run_distributed(main, 2, timeout=300)
