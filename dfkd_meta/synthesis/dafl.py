"""DAFL (Chen et al. 2019, "Data-Free Learning of Student Networks", ICCV).

A generator is trained against the fixed teacher with the one-hot loss (the teacher should be
confident on its outputs), the activation loss (large penultimate features) and the
information-entropy loss (balanced classes over the batch); the student is trained jointly on the
same batch with KD at temperature 1. Settings as the reference code for MNIST: generator
(DCGAN-style, z of 100) with Adam at lr 0.2, student Adam at lr 2e-3, oh 1, ie 5, a 0.1.
Deviations: the batch is the loop's (``OnlineConfig.batch_size``, 256 by default; the reference code
uses 512) and the generator's width ``ngf`` 16 (the reference's 64 costs hundreds of times the
teacher on a CPU; ``--set ngf=64`` restores it); outputs are clipped to the input domain when the
teacher's raw range is known; the student and the generator step on the batch the generator produced before its step (as the
reference code does). With a sidecar: the class-conditional moment term on the teacher's hidden
layers, classes given by the teacher's argmax, weight ``feature``.
"""
from __future__ import annotations

import torch

from . import losses, method
from .base import Method


@method("dafl")
class DAFL(Method):
    """DAFL: a generator trained for confident, varied, class-balanced teacher outputs (Chen et al. 2019)."""

    defaults = {"lr_g": 0.2, "nz": 100, "ngf": 16, "oh": 1.0, "ie": 5.0, "a": 0.1, "feature": 1.0}
    student = {"loss": "kd", "optimizer": "adam", "lr": 2e-3, "temperature": 1.0, "schedule": "constant"}

    def __init__(self, ctx, options, gen):
        super().__init__(ctx, options, gen)
        self.generator = self.make_generator(int(self.opt["nz"]))
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.opt["lr_g"])
        self.taps = ctx.taps(features=True)

    def next_batch(self, student, n):
        self.generator.train()
        x = self.ctx.clip(self.generator(self.noise(n, int(self.opt["nz"]))))
        acts = self.ctx.run(x, self.taps)
        logits = acts[self.ctx.logits]
        terms = {"one_hot": self.opt["oh"] * losses.one_hot(logits),
                 "information_entropy": self.opt["ie"] * losses.information_entropy(logits)}
        if self.ctx.features is not None:
            terms["activation"] = self.opt["a"] * losses.activation(acts[self.ctx.features])
        terms["prior"] = self.prior_loss(acts, logits.detach().argmax(1))
        loss = self.objective(terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return x.detach(), logits.detach()

    @torch.no_grad()
    def synthetic_set(self, n):
        self.generator.eval()
        return self.ctx.clip(self.generator(self.noise(n, int(self.opt["nz"])))).cpu()

    def state_dict(self):
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
