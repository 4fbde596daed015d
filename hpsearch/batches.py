"""Batches of uint8 images from where a split lives to the device that trains on them.

A split lives on the device when it fits there (the usual case: its rows are taken by
indexing, nothing is copied), or in ordinary host memory when it does not (data.placement).
Then each batch's rows are gathered into one of two small page-locked staging buffers and
copied to the device without blocking, on a copy stream of its own, so that the copy of the
next batch runs while the device computes on this one; a buffer is reused only once its
copy has finished. Only the staging buffers are page-locked, never the split itself: torch's
host allocator rounds a pinned block up to a power of two (5 GB of images would lock 8 GB,
which a 12.7 GB Colab VM cannot spare), and workers on one GPU can then share one copy of the
split in shared memory. The images are kept channels-last (N, H, W, C in memory), which is
what the convolutions want.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

# Host-to-device copies on a stream of their own, overlapping the compute stream (an event
# orders them); False puts them on the compute stream. `make gpu-check` measures both.
OVERLAP = True

# Page-locked by this process's staging buffers, rounded as allocated: now, and at most at once
_pinned = {"live": 0, "peak": 0}


def pinned_total() -> int:
    """Bytes this process has page-locked for staging buffers: the most held at once, as the
    allocator rounds them. Freed buffers stay locked in torch's host allocator, which hands
    them to the next buffers of their size: what it holds is this peak."""
    return _pinned["peak"]


def _unpinned(n: int) -> None:
    _pinned["live"] -= n


def pinned_size(n: int) -> int:
    """What page-locking n bytes takes: torch's caching host allocator rounds every block up
    to a power of two."""
    return 1 << max(0, n - 1).bit_length()


def staging_buffer(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host memory to gather a batch into: page-locked where the batch goes to a CUDA device
    (an asynchronous copy needs it) and the system grants it; else ordinary memory, whose
    copies block."""
    if device.type == "cuda":
        try:
            buf = torch.empty(shape, dtype=dtype, pin_memory=True)
            n = pinned_size(buf.numel() * buf.element_size())
            _pinned["live"] += n
            _pinned["peak"] = max(_pinned["peak"], _pinned["live"])
            weakref.finalize(buf, _unpinned, n)
            return buf
        except RuntimeError:
            pass
    return torch.empty(shape, dtype=dtype)


_copy_streams: dict = {}  # {GPU index: the stream copies to it go on}


def copy_stream(device: torch.device) -> "torch.cuda.Stream":
    """The copy stream of a GPU, one per process: a stream per epoch's Rows would draw on
    torch's pool of streams, and its caching allocator keeps the batches' blocks apart per
    stream, holding more memory than one stream's."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _copy_streams:
        _copy_streams[index] = torch.cuda.Stream(index)
    return _copy_streams[index]


class Rows:
    """One split's images (uint8, N x C x H x W, channels-last) as batches on `device`."""

    def __init__(self, x: torch.Tensor, device: torch.device, batch_size: int = 0,
                 staged: Optional[bool] = None):
        """`staged`: copy through the staging buffers (default: when x is not on `device`;
        forced on the CPU, the tests take the path a GPU takes)."""
        self.x, self.device = x, torch.device(device)
        d = self.device
        here = x.device.type == d.type and (d.index is None or x.device.index == d.index)
        self.remote = not here if staged is None else staged
        self._buffers: list = []
        self._copied: list = []
        self._turn = 0
        self._batch_size = batch_size

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at `idx` (on the split's own device), on the training device."""
        if not self.remote:
            return self.x[idx]
        nhwc = self.x.permute(0, 2, 3, 1)  # the memory's own order: a contiguous view
        buf = self._buffer(len(idx))
        torch.index_select(nhwc, 0, idx, out=buf)
        return self._send(buf)

    def span(self, start: int, stop: int) -> torch.Tensor:
        """The images start..stop-1, on the training device (evaluation's batches)."""
        part = self.x[start:stop]
        if not self.remote:
            return part
        buf = self._buffer(len(part))
        buf.copy_(part.permute(0, 2, 3, 1))
        return self._send(buf)

    def _buffer(self, n: int) -> torch.Tensor:
        """A staging buffer of n rows whose previous copy to the device has finished."""
        if not self._buffers:
            _, c, h, w = self.x.shape
            rows = max(n, self._batch_size)
            self._buffers = [staging_buffer((rows, h, w, c), self.x.dtype, self.device)
                             for _ in range(2)]
            self._copied = [None, None]
        self._turn ^= 1
        done: Optional[torch.cuda.Event] = self._copied[self._turn]
        if done is not None:
            done.synchronize()
        buf = self._buffers[self._turn]
        if n > len(buf):  # a batch larger than the first (never, within an epoch)
            buf = self._buffers[self._turn] = staging_buffer((n, *buf.shape[1:]), buf.dtype,
                                                             self.device)
        return buf[:n]

    def _send(self, buf: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            out = self._to_cuda(buf)
        else:
            out = buf.to(self.device)
            if out.data_ptr() == buf.data_ptr():
                out = out.clone()  # the same memory (a CPU "device"): the buffer is reused next
        return out.permute(0, 3, 1, 2)

    def _to_cuda(self, buf: torch.Tensor) -> torch.Tensor:
        """The copy, queued without blocking: on the copy stream, which the compute stream then
        waits for (an event, on the device: the host goes on), with the batch's memory marked
        as used by the compute stream so that the allocator does not hand it out early. An
        event on the copy's stream marks when `buf` may be written again."""
        compute = torch.cuda.current_stream(self.device)
        pinned = buf.is_pinned()
        if OVERLAP and pinned:
            stream = copy_stream(self.device)
            with torch.cuda.stream(stream):
                out = buf.to(self.device, non_blocking=True)
            compute.wait_stream(stream)
            out.record_stream(compute)
            copied_on = stream
        else:
            out = buf.to(self.device, non_blocking=pinned)
            copied_on = compute
        event = torch.cuda.Event()
        event.record(copied_on)
        self._copied[self._turn] = event
        return out
