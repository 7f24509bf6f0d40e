"""Detect, while it runs, an online distillation whose student has stopped learning.

Two signs, read on the batches the student is trained on (no data needed, nothing extra is run):
the student agrees with the teacher no more often than chance, or its loss (for DFAD, the
teacher-student discrepancy the generator maximises) has risen far above the lowest it reached after
the warm-up and stays there. Both are judged on windows of iterations after a warm-up, and only a sign that holds
for ``patience`` windows in a row raises an alarm, once per kind: a single hard batch is not a
collapse. An alarm is a line in the log at once and an entry in the run's report; the run goes on
(the user decides; ``--stop-on-stall`` stops it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class StallMonitor:
    """Windowed checks of the student's agreement with the teacher and of its loss."""

    num_classes: int
    window: int = 50  # iterations per window
    warmup_windows: int = 4  # windows before anything is judged (the student starts at chance)
    patience: int = 3  # consecutive bad windows that make an alarm
    chance_margin: float = 0.05  # agreement at most chance + this is "at chance"
    loss_rise: float = 2.0  # a window loss this many times the lowest window loss is "rising"
    alarms: list[dict] = field(default_factory=list)
    _agree: list[float] = field(default_factory=list)
    _chance: list[float] = field(default_factory=list)
    _loss: list[float] = field(default_factory=list)
    _windows: int = 0
    _lowest: float = float("inf")
    _bad: dict = field(default_factory=lambda: {"chance": 0, "rising": 0})

    @torch.no_grad()
    def update(self, student_out: torch.Tensor, teacher_out: torch.Tensor, loss: float, iteration: int,
               seconds: float) -> dict | None:
        """Record one iteration; returns a new alarm (a dict with ``kind`` and ``message``) when one is raised."""
        s, t = student_out.detach().argmax(1), teacher_out.detach().argmax(1)
        self._agree.append(float((s == t).float().mean()))
        # the agreement a student that ignores its input would reach: guessing the batch's commonest class
        share = torch.bincount(t, minlength=self.num_classes).float() / max(1, len(t))
        self._chance.append(float(share.max()))
        self._loss.append(float(loss))
        if len(self._loss) < self.window:
            return None
        agree, chance, window_loss = np.mean(self._agree), np.mean(self._chance), np.mean(self._loss)
        self._agree.clear(), self._chance.clear(), self._loss.clear()
        self._windows += 1
        if self._windows <= self.warmup_windows:
            # nor is the loss's low remembered: an adversary's loss starts low, before its generator has learned to
            # find disagreement (DFAD on an MLP teacher: 0.39 in the warm-up, 1.4 by iteration 400, 97.6 % at the end)
            return None
        signs = {"chance": agree <= chance + self.chance_margin,
                 "rising": np.isfinite(self._lowest) and self._lowest > 0 and window_loss >= self.loss_rise * self._lowest}
        self._lowest = min(self._lowest, window_loss)
        raised = None
        for kind, bad in signs.items():
            self._bad[kind] = self._bad[kind] + 1 if bad else 0
            if self._bad[kind] == self.patience and not any(a["kind"] == kind for a in self.alarms):
                what = (f"the student agrees with the teacher on {agree:.0%} of its own training batches, no more "
                        f"than chance ({chance:.0%})" if kind == "chance" else
                        f"the student's loss has risen to {window_loss:.4g}, {window_loss / self._lowest:.1f}x the "
                        f"lowest it reached ({self._lowest:.4g})")
                raised = {"kind": kind, "iteration": iteration, "seconds": round(seconds, 1),
                          "agreement": round(float(agree), 4), "chance": round(float(chance), 4),
                          "loss": float(window_loss), "lowest_loss": float(self._lowest),
                          "message": f"the student has stopped learning at iteration {iteration}: {what} for "
                                     f"{self.patience * self.window} iterations"}
                self.alarms.append(raised)
        return raised

    def state_dict(self) -> dict:
        return {"alarms": list(self.alarms), "windows": self._windows, "lowest": self._lowest, "bad": dict(self._bad)}

    def load_state_dict(self, state: dict) -> None:
        self.alarms = list(state.get("alarms", []))
        self._windows = int(state.get("windows", 0))
        self._lowest = float(state.get("lowest", float("inf")))
        self._bad = dict(state.get("bad", {"chance": 0, "rising": 0}))
