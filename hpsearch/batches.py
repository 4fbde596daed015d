"""Batches of uint8 images from where a split lives to the device that trains on them.

A split lives on the device when it fits there (the usual case: its rows are taken by
indexing, nothing is copied), or in pinned host memory when it does not (data.placement):
then each batch's rows are gathered into one of two pinned staging buffers and copied to the
device without blocking, so that the next batch is gathered while the device computes; a
buffer is reused only once its copy has finished. The images are kept channels-last (N, H, W,
C in memory), which is what the convolutions want.
"""

from __future__ import annotations

from typing import Optional

import torch


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
        return part.to(self.device, non_blocking=part.is_pinned())

    def _buffer(self, n: int) -> torch.Tensor:
        """A staging buffer of n rows whose previous copy to the device has finished."""
        if not self._buffers:
            _, c, h, w = self.x.shape
            rows = max(n, self._batch_size)
            pin = self.x.is_pinned()
            self._buffers = [torch.empty((rows, h, w, c), dtype=self.x.dtype, pin_memory=pin)
                             for _ in range(2)]
            self._copied = [None, None]
        self._turn ^= 1
        done: Optional[torch.cuda.Event] = self._copied[self._turn]
        if done is not None:
            done.synchronize()
        buf = self._buffers[self._turn]
        if n > len(buf):  # a batch larger than the first (never, within an epoch)
            buf = self._buffers[self._turn] = torch.empty(
                (n, *buf.shape[1:]), dtype=buf.dtype, pin_memory=buf.is_pinned())
        return buf[:n]

    def _send(self, buf: torch.Tensor) -> torch.Tensor:
        out = buf.to(self.device, non_blocking=buf.is_pinned())
        if self.device.type == "cuda":
            # On the stream the copy went to: the target GPU's, which need not be the current.
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._copied[self._turn] = event
        elif out.data_ptr() == buf.data_ptr():
            out = out.clone()  # the same memory (a CPU "device"): the buffer is reused next
        return out.permute(0, 3, 1, 2)
