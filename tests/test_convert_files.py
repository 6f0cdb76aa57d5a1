"""Checkpoint files: the safetensors reader's up-front checks (index vs files, truncation, pickles),
sliced reads, the sharded writer, the torch_dist metadata check, and the atomic output directory."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from r1mega.convert.atomic import atomic_directory
from r1mega.convert.hf_checkpoint import INDEX_NAME, HFCheckpoint, write_safetensors_shards
from r1mega.convert.mcore_checkpoint import check_mcore_checkpoint


def _sharded_checkpoint(directory, tensors: dict[str, torch.Tensor], files: int = 2):
    names = sorted(tensors)
    weight_map = {}
    for i in range(files):
        part = names[i::files]
        fname = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / fname))
        weight_map.update({n: fname for n in part})
    (directory / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(4 + i, 3, generator=g) for i in range(5)}


def test_reads_whole_tensors_and_slices(tmp_path):
    tensors = _tensors()
    with HFCheckpoint(_sharded_checkpoint(tmp_path, tensors)) as ckpt:
        assert ckpt.names() == set(tensors)
        for name, t in tensors.items():
            assert torch.equal(ckpt.read(name, t.shape, (slice(None), slice(None))), t)
            assert torch.equal(ckpt.read(name, t.shape, (slice(1, 3), slice(None))), t[1:3])
            assert torch.equal(ckpt.read(name, t.shape, (slice(None), slice(2, 3))), t[:, 2:3])


def test_missing_shard_is_named(tmp_path):
    _sharded_checkpoint(tmp_path, _tensors())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"1 shard\(s\) listed in model.safetensors.index.json are missing: model-00002-of-00002"):
        HFCheckpoint(tmp_path)


def test_index_entry_absent_from_its_file_is_named(tmp_path):
    _sharded_checkpoint(tmp_path, _tensors())
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lists 'ghost' in model-00001-of-00002.safetensors, which does not contain it"):
        HFCheckpoint(tmp_path)


@pytest.mark.parametrize("keep", [4, 40, -7])
def test_truncated_file_is_named(tmp_path, keep):
    _sharded_checkpoint(tmp_path, _tensors())
    path = tmp_path / "model-00001-of-00002.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"model-00001-of-00002.safetensors: (truncated|corrupt)"):
        HFCheckpoint(tmp_path)


def test_pickle_weights_are_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle checkpoints are never loaded"):
        HFCheckpoint(tmp_path)


def test_several_files_without_index_are_refused(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    save_file({"b": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="without the index a missing shard could not be noticed"):
        HFCheckpoint(tmp_path)


def test_wrong_shape_is_named_with_its_file(tmp_path):
    with HFCheckpoint(_sharded_checkpoint(tmp_path, _tensors())) as ckpt:
        with pytest.raises(ValueError, match=r"model-0000\d-of-00002.safetensors: tensor 't1' has shape \(5, 3\), the model config implies \(6, 3\)"):
            ckpt.read("t1", (6, 3), (slice(None), slice(None)))


@pytest.mark.parametrize("max_shard", [1 << 30, 100])
def test_writer_shards_and_indexes(tmp_path, max_shard):
    tensors = _tensors(seed=1)
    buckets = [list(tensors.items())[:2], list(tensors.items())[2:]]
    weight_map = write_safetensors_shards(buckets, tmp_path, max_shard_bytes=max_shard)
    assert set(weight_map) == set(tensors)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    if max_shard > 1000:
        assert files == ["model.safetensors"] and not (tmp_path / INDEX_NAME).exists()
    else:
        assert len(files) == len(tensors) and (tmp_path / INDEX_NAME).exists()
    with HFCheckpoint(tmp_path) as ckpt:
        for name, t in tensors.items():
            assert torch.equal(ckpt.read(name, t.shape, (slice(None),)), t)


@pytest.mark.parametrize("reserve", [None, 64])  # 64 bytes: the header outgrows its space, data moves
def test_streamed_safetensors_file_loads_with_safetensors_itself(tmp_path, monkeypatch, reserve):
    from safetensors.torch import load_file

    from r1mega.convert import safetensors_stream

    if reserve is not None:
        monkeypatch.setattr(safetensors_stream, "HEADER_RESERVE", reserve)
    tensors = {
        "w": torch.randn(3, 4), "half": torch.randn(5).to(torch.bfloat16), "int": torch.arange(6),
        "strided": torch.arange(6.0).view(2, 3).t(),  # not contiguous: written in logical order
        "view": torch.randn(10)[2:7], "empty": torch.zeros(0, 3), "flags": torch.tensor([True, False]),
    }
    path = tmp_path / "x.safetensors"
    with safetensors_stream.SafetensorsStreamWriter(path) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
    got = load_file(str(path))
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t.contiguous()), name


def test_writer_refuses_a_tensor_delivered_twice(tmp_path):
    t = torch.ones(2)
    with pytest.raises(ValueError, match="delivered twice"):
        write_safetensors_shards([[("a", t)], [("a", t)]], tmp_path)


# ------------------------------------------------------------------------------------------------
# torch_dist metadata: unpickled only with checkpoint-metadata classes
# ------------------------------------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_mcore_metadata_with_foreign_objects_is_refused(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ValueError, match="refusing to unpickle builtins.print"):
        check_mcore_checkpoint(tmp_path)


def test_non_torch_dist_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no metadata.json"):
        check_mcore_checkpoint(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    with pytest.raises(ValueError, match="only torch_dist"):
        check_mcore_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------
# atomic output
# ------------------------------------------------------------------------------------------------


def test_failure_leaves_no_destination(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_directory(dest) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x" * 10)
            raise RuntimeError("midway")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


def test_failure_keeps_the_previous_destination(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("previous")
    with pytest.raises(ValueError, match="already exists"):
        with atomic_directory(dest):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(dest, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("midway")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # a plain mkdir's mode, not mkdtemp's 0700
