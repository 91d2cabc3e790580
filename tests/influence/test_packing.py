"""PackedResults: per-batch results copied into shared blocks (memory flat in N), values unchanged."""

from __future__ import annotations

import torch

from infra_pl.influence.packing import PackedResults


def test_views_equal_the_inputs_and_share_one_block():
    packer = PackedResults(block_bytes=1024)  # 256 float32 per block
    parts = [torch.randn(4, 3), torch.randn(2, 3), torch.randn(5, 3)]
    views = [packer.add(p) for p in parts]
    for part, view in zip(parts, views):
        assert view.shape == part.shape and view.dtype == part.dtype
        assert torch.equal(view, part)
        assert view.data_ptr() != part.data_ptr()  # a copy, not the batch's own small tensor
    storages = {v.untyped_storage().data_ptr() for v in views}
    assert len(storages) == 1  # 33 values fit one 256-value block
    del packer
    assert torch.equal(torch.cat(views), torch.cat(parts))  # views keep their block alive


def test_new_blocks_when_full_and_for_oversized_results():
    packer = PackedResults(block_bytes=64)  # 16 float32 per block
    a, b = packer.add(torch.ones(10)), packer.add(torch.full((10,), 2.0))  # b does not fit after a
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    big = packer.add(torch.arange(100.0))  # larger than a block: a block of its own size
    assert torch.equal(big, torch.arange(100.0)) and torch.all(a == 1) and torch.all(b == 2)
    ints = packer.add(torch.tensor([1, 2, 3]))  # another dtype keeps its own blocks
    assert ints.dtype == torch.int64 and ints.tolist() == [1, 2, 3]
