"""Memory for the batched decoder's KV cache rows: resident as they fill, given back as they free.

A row holds a whole context (2,048 tokens of SmolLM2-135M take 92 MB in fp32 over its
60 key and value buffers), but most answers use a fraction of it. The buffers are
private anonymous mappings: a page becomes resident when attention first writes a
token into it (attention reads only the tokens a row holds), and a row that frees is
handed back with ``MADV_DONTNEED``, so memory follows the tokens in use, not the rows
reserved. The mapping itself stays, so the IO bindings that point into it stay valid;
a released page reads as zeros the next time it is touched.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = mmap.PAGESIZE


class RowMemory:
    """``count`` buffers of ``shape`` (rows first), each row's bytes contiguous.

    Attributes:
        buffers: the arrays, one per key or value input of the model.
    """

    def __init__(self, count: int, shape: tuple[int, ...], dtype: type | np.dtype) -> None:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        self.regions = [mmap.mmap(-1, max(size, 1), flags=flags) for _ in range(count)]
        self.buffers: list[np.ndarray] = [
            np.frombuffer(region, dtype, int(np.prod(shape))).reshape(shape) for region in self.regions
        ]
        self.row_bytes = size // shape[0] if shape[0] else 0

    @property
    def nbytes(self) -> int:
        """Bytes reserved (address space), resident or not."""
        return sum(buffer.nbytes for buffer in self.buffers)

    def release(self, row: int) -> None:
        """Give ``row``'s pages back to the system; it reads as zeros afterwards."""
        start = -(-row * self.row_bytes // PAGE) * PAGE  # whole pages inside the row only
        end = (row + 1) * self.row_bytes // PAGE * PAGE
        if end > start:
            for region in self.regions:
                region.madvise(mmap.MADV_DONTNEED, start, end - start)
