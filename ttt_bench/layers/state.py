"""What a causal layer carries from one token to the next when it decodes: its state.

A layer's state is a dataclass subclassing DecodeState whose fields are tensors, lists or tuples of tensors,
or plain numbers (a token count). Its size is what the state's tensors hold, counted from the tensors
themselves, so a layer cannot misreport it: attention's KV cache grows with the context, a recurrent or TTT
layer's fast weights (and its pending mini-batch) do not. Each layer also states the size analytically
(`SequenceMixer.decode_state_numel`), and the tests hold the two equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class DecodeState:
    """Base of every layer's decode state. `tokens`: how many tokens it has read."""

    tokens: int

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds, in field order."""
        return tensors_in([getattr(self, field.name) for field in dataclasses.fields(self)])

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors())

    @property
    def nbytes(self) -> int:
        """Bytes of the state's tensors (their elements, not the allocator's rounding)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


def tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors of a value a layer returns or holds: a tensor, a DecodeState, or lists and tuples of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, DecodeState):
        return value.tensors()
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_in(item)]
    return []
