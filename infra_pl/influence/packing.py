"""Keep many small per-batch results in a few large blocks, so a long pass's memory stays flat in N.

Why: a pass that keeps one small result tensor per batch (instance scores [B, M], token scores
[M, B, T-1]) puts thousands of tiny long-lived allocations among the batch's large short-lived
buffers in glibc's heap. Each tiny one pins the hole it sits in, so later large buffers no longer
fit there and the heap, and the RSS, grows with the number of batches although the live memory
does not. Measured on a 2-layer width-64 Llama, 64-token sequences, 1 thread, one-direction
instance pass: keeping the per-batch tensors, the peak above setup went from 56 MB at N = 512 to
236 MB at N = 4096, and glibc's heap ended with 235 MB free but resident; copying each batch's
scores out of the heap (as Python floats) kept it at 44 and 54 MB. :class:`PackedResults` gets the
same effect without Python floats: results are copied into 4 MiB blocks, one allocation per
million values.
"""

from __future__ import annotations

import torch

BLOCK_BYTES = 4 * 2**20


class PackedResults:
    """Copies CPU tensors into shared blocks and returns same-shape views of them.

    GPU tensors are returned unchanged (the caching allocator has no such heap). A view keeps
    its block alive, so the results stay valid after the packer is gone.
    """

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self.block_bytes = int(block_bytes)
        self._blocks: dict[torch.dtype, tuple[torch.Tensor, int]] = {}  # dtype -> (block, used elements)

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of ``tensor`` living in a shared block (or ``tensor`` itself off the CPU)."""
        if tensor.device.type != "cpu":
            return tensor
        numel = tensor.numel()
        block, used = self._blocks.get(tensor.dtype, (None, 0))
        if block is None or used + numel > block.numel():
            capacity = max(numel, self.block_bytes // tensor.element_size())
            block, used = torch.empty(capacity, dtype=tensor.dtype), 0
        view = block[used : used + numel].view(tensor.shape)
        view.copy_(tensor)
        self._blocks[tensor.dtype] = (block, used + numel)
        return view
