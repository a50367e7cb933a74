"""One training step captured as a CUDA graph and replayed.

A step of the paper's small networks is a few hundred tiny kernels; launched one by one from
Python they cost milliseconds of CPU time while the GPU idles. Captured once, the whole step
(forward, both backward passes, lookahead, Adam) is one graph launch. Capture needs static
input buffers, an optimizer built with ``capturable=True`` and a few eager warm-up calls on a
side stream (lazy cuBLAS/allocator set-up must not happen during capture); the warm-up calls
are real training steps, so training is the same iteration for iteration.
"""
from __future__ import annotations

from typing import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class CapturedStep:
    """``step(x, y)`` run eagerly for ``warmup`` calls, then captured once and replayed.

    The returned loss tensors of a replayed step are the graph's static outputs: they are
    overwritten by the next call (read them before, as callbacks do).
    """

    def __init__(self, step: Step, warmup: int = 3) -> None:
        self.step, self.warmup, self.calls = step, warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side = torch.cuda.Stream()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.graph is None:
            self.calls += 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                if self.calls <= self.warmup:
                    out = self.step(x, y)
                else:  # capture records the step without running it; the replay below runs it
                    self.inputs = (x.clone(), y.clone())
                    self.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self.graph, stream=self.side):
                        self.outputs = self.step(*self.inputs)
            torch.cuda.current_stream().wait_stream(self.side)
            if self.graph is None:
                return out
        self.inputs[0].copy_(x)
        self.inputs[1].copy_(y)
        self.graph.replay()
        return self.outputs
