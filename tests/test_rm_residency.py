"""HostResidency: frozen weights kept in host memory, on the device only while used."""

from __future__ import annotations

import pytest
import torch

from r1mega.rm.residency import HostResidency


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.proj = torch.nn.Linear(6, 6)
        self.register_buffer("scale", torch.rand(6) + 0.5)

    def forward(self, ids):
        h = self.proj(self.embed(ids)) * self.scale
        return h @ self.embed.weight.t()  # the output layer is the embedding (tied)


def _frozen(seed: int) -> _Tied:
    torch.manual_seed(seed)
    m = _Tied()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_visits_give_the_same_outputs_and_leave_the_host_copies_in_place():
    model, ref = _frozen(3), _frozen(3)
    ids = torch.randint(0, 11, (4, 5))
    residency = HostResidency([model], "cpu")
    assert not residency.loaded
    assert len(residency.tensors) == 4  # embedding, linear weight and bias, buffer: no duplicate
    assert residency.nbytes == sum(t.numel() * 4 for t in residency.tensors)
    host_ptrs = [h.data_ptr() for h in residency.host]
    assert [t.data_ptr() for t in residency.tensors] == host_ptrs  # off: the params are the host copies
    for _ in range(2):
        with residency.on_device():
            assert residency.loaded
            # on: fresh device copies (here another CPU tensor), not the host copies
            assert all(t.data_ptr() != h for t, h in zip(residency.tensors, host_ptrs))
            out = model(ids)
        assert torch.equal(out, ref(ids))
        assert [t.data_ptr() for t in residency.tensors] == host_ptrs
    # a failure inside the visit still takes the weights off the device
    with pytest.raises(RuntimeError, match="inside"):
        with residency.on_device():
            raise RuntimeError("inside")
    assert not residency.loaded and [t.data_ptr() for t in residency.tensors] == host_ptrs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_is_freed_between_visits():
    model = _frozen(5).cuda()
    ref = _frozen(5).cuda()
    ids = torch.randint(0, 11, (4, 5), device="cuda")
    expected = ref(ids)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    residency = HostResidency([model], "cuda")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before - residency.nbytes
    assert all(h.is_pinned() for h in residency.host)
    with residency.on_device():
        assert all(t.is_cuda for t in residency.tensors)
        out = model(ids)
    assert torch.equal(out, expected)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before - residency.nbytes + out.numel() * 4
