"""Inference workloads: a prompt's prefill, and the tokens generated one at a time after it.

    prefill   the layer's prefill(x) under torch.inference_mode: x [B, N, D] -> (y, the state after token N)
    decode    the prompt of N tokens prefilled in chunks of `prefill_chunk` tokens (each chunk's input made and
              dropped in turn, so what stays between chunks is the state, as a server holds it), then tokens
              generated one at a time from that state, timed in samples of consecutive steps (measure.py:
              timed_decode). Its peak memory is taken over the prefill and the first `samples` tokens: the state
              plus one chunk's work, which is what must fit to serve a context of N (the inference
              out-of-memory frontier, `ttt-bench oom` with [oom] measurement = "decode").

A layer without the step API (a non-causal one) has no decode; its prefill is its forward under inference_mode,
with no state. The callables come from the cell's backend (profile/backend.py): the layer's own forms or
torch.compile's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ttt_bench.layers.state import DecodeState


@dataclass(frozen=True)
class DecodeSettings:
    samples: int = 32  # timed samples of generated tokens (profile/measure.py: timed_decode)
    prefill_chunk: int = 1024  # tokens per prefill call when the prompt is made chunk by chunk


class InferenceWorkload:
    """The prompt x: [B, N, D] and the generated token's input [B, 1, D], built outside every timed region, and
    the calls that prefill and decode with `forms` (forward(x) and decode(x, state))."""

    def __init__(self, layer: torch.nn.Module, x: torch.Tensor, forms: dict[str, Callable], settings: DecodeSettings,
                 context: Callable[[], Any]) -> None:
        self.layer, self.forms, self.settings, self.context = layer, forms, settings, context
        self.x = x.detach()
        self.token = torch.randn_like(self.x[:, :1])
        self.decodes = bool(getattr(layer, "decodes", False))
        self.state: DecodeState | None = None  # the decode pass's state, once its prompt is prefilled
        # (tokens, bytes) of the state right after the prompt: as prefill() returned it, and as the decode pass's
        # chunked prefill left it (the state's size is read where it is made, not by another prefill)
        self.prefill_state: tuple[int, int] | None = None
        self.prompt_state: tuple[int, int] | None = None

    def prefill(self) -> tuple[torch.Tensor, DecodeState | None]:
        with torch.inference_mode(), self.context():
            if not self.decodes:
                return self.forms["forward"](self.x), None
            y, state = self.forms["decode"](self.x, None)
        self.prefill_state = (state.tokens, state.nbytes)
        return y, state

    def prefill_in_chunks(self) -> DecodeState:
        """The state after the prompt, made chunk by chunk (each chunk's input drawn here, then dropped)."""
        batch, seq_len, width = self.x.shape
        generator = torch.Generator(device=self.x.device).manual_seed(seq_len)
        state = None
        with torch.inference_mode(), self.context():
            for start in range(0, seq_len, self.settings.prefill_chunk):
                length = min(self.settings.prefill_chunk, seq_len - start)
                chunk = torch.randn(batch, length, width, generator=generator, device=self.x.device, dtype=self.x.dtype)
                _, state = self.forms["decode"](chunk, state)
        self.prompt_state = (state.tokens, state.nbytes)
        return state

    def prefill_and_decode(self) -> None:
        """What serving a context of N takes: the chunked prefill, then the generated tokens; keeps the state (and
        the size it had after the prompt)."""
        self.state = self.prefill_in_chunks()
        for _ in range(self.settings.samples):
            self.step()

    def step(self) -> torch.Tensor:
        """One generated token from the kept state, which it advances."""
        with torch.inference_mode(), self.context():
            y, self.state = self.forms["decode"](self.token, self.state)
        return y
