"""Reuse of large output buffers whose tensors have died (CPU engines).

A fresh multi-hundred-MB tensor costs a page fault per 4 KiB page on first write: the
allocator maps large blocks anew for each allocation and unmaps them on free. With P = 64
outputs of 1e6 points (256 MB, float32) those faults cost about as much system time as
the culled forward's arithmetic (measured: 63k faults, 0.28 s per step, one thread). So
outputs of at least ``MIN_BYTES`` come from this cache: the byte buffer of a dead output
is handed out again, already mapped. The Numba engine's backward draws its large scratch
(the upstream gradient in sorted order, the size of the output) from here too, so in a
training step it reuses the dead output's memory rather than holding a second buffer.

"Dead" is decided by reference count: a handed-out tensor (``torch.from_numpy``) holds a
reference to its numpy view, which holds the buffer; every torch view of the tensor
shares its storage, every numpy view references the buffer. So a buffer is free exactly
when the cache holds its only reference, and memory still reachable from any live tensor
or array is never handed out twice.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

MIN_BYTES = 32 << 20  # below this the allocator's heap reuses memory already
MAX_BYTES = 1 << 30  # total kept; beyond it dead buffers are dropped, oldest first

_lock = threading.Lock()
_bufs: list[np.ndarray] = []  # uint8 buffers, oldest first


def _refs(i: int) -> int:
    return sys.getrefcount(_bufs[i])


def _calibrate() -> int:
    """References a buffer has from the cache alone (the list and getrefcount's own)."""
    _bufs.append(np.empty(1, np.uint8))
    try:
        return _refs(len(_bufs) - 1)
    finally:
        _bufs.pop()


_DEAD = _calibrate()


def _aligned(buf: np.ndarray, shape: tuple, dtype) -> np.ndarray:
    count = int(np.prod(shape))
    off = -buf.ctypes.data % 64  # cache-line start, for the kernels' streaming stores
    return buf[off : off + count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


def empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised CPU tensor of ``shape`` and ``dtype`` (float32 or float64), 64-byte
    aligned; from the cache of dead buffers when it needs at least ``MIN_BYTES``."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, but got {dtype}")
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    if int(np.prod(shape)) * np.dtype(np_dtype).itemsize < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(empty_array(shape, np_dtype))


def empty_array(shape: tuple, dtype) -> np.ndarray:
    """Uninitialised, 64-byte aligned numpy array of ``shape`` and ``dtype``, from the cache
    of dead buffers (whatever its size: callers send only large ones). Scratch drawn from
    here (the backward's sorted upstream gradient, the size of the forward's output) reuses
    the memory of the output that just died instead of holding a buffer of its own."""
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize + 64
    if need > MAX_BYTES:  # larger than the whole cache: an ordinary, uncached buffer
        return _aligned(np.empty(need, np.uint8), shape, dtype)
    with _lock:
        best = -1
        for i in range(len(_bufs)):
            size = _bufs[i].nbytes
            if size >= need and size <= 2 * need and _refs(i) == _DEAD:
                if best < 0 or size < _bufs[best].nbytes:
                    best = i
        if best >= 0:
            buf = _bufs.pop(best)
        else:
            _trim(MAX_BYTES - need)
            buf = np.empty(need, np.uint8)
        _bufs.append(buf)  # most recently used last
        return _aligned(buf, shape, dtype)


def _trim(budget: int) -> None:
    """Drop buffers until the cache holds at most ``budget`` bytes: dead ones first (their
    memory goes back to the system), then live ones (which then die as ordinary tensors)."""
    total = sum(b.nbytes for b in _bufs)
    for dead_only in (True, False):
        i = 0
        while total > budget and i < len(_bufs):
            if not dead_only or _refs(i) == _DEAD:
                total -= _bufs.pop(i).nbytes
            else:
                i += 1


def clear() -> None:
    """Forget every cached buffer (live tensors keep theirs)."""
    with _lock:
        _bufs.clear()


def cached_bytes() -> int:
    """Test instrumentation: bytes the cache holds."""
    with _lock:
        return sum(b.nbytes for b in _bufs)
