"""DFAD (Fang et al. 2019, "Data-Free Adversarial Distillation").

Adversarial: the generator maximises the teacher-student discrepancy (mean absolute difference of
the logits), the student minimises it, five student steps on fresh generator batches per generator
step. Settings as the reference code for MNIST: generator (DCGAN-style, z of 256) with Adam at lr
1e-3, student SGD at lr 0.1 (momentum 0.9, weight decay 5e-4) with the L1 loss, batch 256. It covers
ZSKT's adversarial belief matching in spirit. Deviations: outputs are clipped to the input domain
when the teacher's raw range is known; the discrepancy and the student's L1 loss are divided by the
teacher's logit spread (``scale_free``, measured once on the untrained generator's inputs; the
student's logits are its network's times that spread, so it still answers in the teacher's units).
The raw L1 ties the method to one logit scale: on a teacher whose logits were 5x larger the
generator collapsed onto one class and the student ended at chance (Fashion-MNIST ResNet, 10.3 %
against 42.9 % for the same teacher unscaled); measured in units of the spread, a run on a scaled
teacher learns the same student. With a sidecar: the class-conditional moment term on the
teacher's hidden layers in the generator's loss (classes: the teacher's argmax), weight ``feature``.
"""
from __future__ import annotations

import torch

from . import losses, method
from .base import Method


@method("dfad")
class DFAD(Method):
    """DFAD: a generator that maximises the teacher-student L1 discrepancy, 5 student steps per generator step."""

    defaults = {"lr_g": 1e-3, "nz": 256, "ngf": 16, "student_steps": 5, "feature": 1.0, "scale_free": 1}
    student = {"loss": "l1", "optimizer": "sgd", "lr": 0.1, "temperature": 1.0}

    def __init__(self, ctx, options, gen):
        super().__init__(ctx, options, gen)
        self.generator = self.make_generator(int(self.opt["nz"]))
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.opt["lr_g"])
        self.taps = ctx.taps()
        self.calls = 0
        self.logit_scale = self._logit_scale() if self.opt["scale_free"] else 1.0

    @torch.no_grad()
    def _logit_scale(self, n: int = 512) -> float:
        """The spread of the teacher's logits on the untrained generator's inputs: the std over classes of each
        input's logits, averaged. The discrepancy and the student's loss are measured in units of it."""
        # a train-mode pass updates BatchNorm's running statistics: the probe must leave the generator as it was
        kept = {k: v.clone() for k, v in self.generator.named_buffers()}
        self.generator.train()
        t = self.ctx.teacher_logits(self.ctx.clip(self.generator(self.noise(n, int(self.opt["nz"])))))
        for k, v in self.generator.named_buffers():
            v.copy_(kept[k])
        scale = float(t.std(1).mean())
        return scale if scale > 1e-6 and scale == scale else 1.0

    def next_batch(self, student, n):
        if self.calls and self.calls % int(self.opt["student_steps"]) == 0:
            self._generator_step(student, n)
        self.calls += 1
        self.generator.train()
        with torch.no_grad():
            x = self.ctx.clip(self.generator(self.noise(n, int(self.opt["nz"]))))
        return x, self.ctx.teacher_logits(x)

    def _generator_step(self, student, n):
        x = self.ctx.clip(self.generator(self.noise(n, int(self.opt["nz"]))))
        acts = self.ctx.run(x, self.taps)
        t = acts[self.ctx.logits]
        loss = self.objective({"l1_discrepancy": -losses.l1_discrepancy(student(x), t) / self.logit_scale,
                               "prior": self.prior_loss(acts, t.detach().argmax(1))})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def synthetic_set(self, n):
        self.generator.eval()
        return self.ctx.clip(self.generator(self.noise(n, int(self.opt["nz"])))).cpu()

    def state_dict(self):
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict(), "calls": self.calls}

    def load_state_dict(self, state):
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.calls = int(state["calls"])
