"""A memory bank of synthesised inputs and the teacher's logits on them (DeepInversion, CMI, FastDFKD
train the student on every input synthesised so far, not only the newest batch)."""
from __future__ import annotations

import torch


class MemoryBank:
    """At most ``capacity`` (input, teacher logits) pairs, on the CPU; the oldest are dropped first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.x is None else len(self.x)

    def add(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        x, logits = x.detach().float().cpu(), logits.detach().float().cpu()
        self.x = x if self.x is None else torch.cat([self.x, x])[-self.capacity:]
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])[-self.capacity:]

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self), (n,), generator=gen)
        return self.x[idx], self.logits[idx]

    def state_dict(self) -> dict:
        return {"x": self.x, "logits": self.logits} if self.x is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.x, self.logits = state.get("x"), state.get("logits")
