"""Rank function for tests/test_plan_accuracy.py: one training step's forward/backward through
megatron's schedule under StorageTracker, on the model and layout a case names."""

from __future__ import annotations

import torch


def measure(cases: list[dict], seed: int = 7) -> list[dict]:
    """Per case (model, layout, micro_batch_size, seq_length, num_microbatches): this rank's peak
    bytes of the storages created during one step's forward_backward (activations and transients:
    the parameters and DDP's main_grad buffers exist before it and are reported apart as `state`;
    no optimizer exists here). Fresh random tokens; fp32, as CPU training runs."""
    import dataclasses

    from megatron.core import parallel_state

    from r1mega.config import load_config
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.plan.measure import StorageTracker
    from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
    from r1mega.training.sft import token_sum_loss
    from r1mega.training.trainer_common import trainer_config_overrides

    out = []
    for case in cases:
        cfg = load_config("examples/configs/tiny.yaml", [f"model=models/{case['model']}.yaml"])
        cfg = dataclasses.replace(cfg, parallel=ParallelConfig(**case["layout"]))
        init_distributed(cfg.parallel, seed=seed, model_cfg=cfg.model)
        chunks = wrap_with_ddp(build_model(cfg.model, cfg.parallel, config_overrides=trainer_config_overrides(cfg)), cfg.parallel)
        g = torch.Generator().manual_seed(seed)
        b, s = case["micro_batch_size"], case["seq_length"]
        mbs = []
        for _ in range(case["num_microbatches"]):
            tokens = torch.randint(0, cfg.model.vocab_size, (b, s), generator=g)
            mbs.append({"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": torch.ones(b, s),
                        "position_ids": torch.arange(s).expand(b, s).contiguous()})
        state = sum(p.untyped_storage().nbytes() for c in chunks for p in c.parameters())
        state += sum(buf.grad_data.untyped_storage().nbytes() for c in chunks for buf in c.buffers)
        for c in chunks:
            c.zero_grad_buffer()
        with StorageTracker() as t:
            forward_backward(chunks, mbs, token_sum_loss, seq_length=s, micro_batch_size=b)
        out.append({"peak": t.peak_bytes, "state": state, "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                    "tp_rank": parallel_state.get_tensor_model_parallel_rank()})
        del chunks
        parallel_state.destroy_model_parallel()  # the process group stays: one init per launch
    destroy_distributed()
    return out
