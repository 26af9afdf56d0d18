"""The block allocator: a free list and reference counts over blocks 1..num_blocks-1.

A block's count is the number of tables holding it (a sequence's, the request's other choices', a prefix-cache
entry's); it returns to the free list at zero. Block 0 is a scratch block that is never handed out: padding rows
of a captured decode batch write there. The host tier (host_tier.py) counts its host blocks with one of these too.
"""

from __future__ import annotations

SCRATCH_BLOCK = 0


class BlockAllocator:
    def __init__(self, num_blocks: int):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}; raise the KV cache budget")
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self._free = list(range(num_blocks - 1, SCRATCH_BLOCK, -1))  # pop() hands out low ids first

    @property
    def usable(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"{n} KV cache blocks requested, {len(self._free)} free")
        if n <= 0:
            return []
        out = self._free[-n:][::-1]
        del self._free[-n:]
        for b in out:
            self.refs[b] = 1
        return out

    def share(self, blocks: list[int]) -> list[int]:
        for b in blocks:
            assert self.refs[b] > 0, f"block {b} is free"
            self.refs[b] += 1
        return list(blocks)

    def release(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            assert self.refs[b] >= 0, f"block {b} released twice"
            if self.refs[b] == 0:
                self._free.append(b)
