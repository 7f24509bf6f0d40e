"""CMI (Fang et al. 2021, "Contrastive Model Inversion for Data-Free Knowledge Distillation", IJCAI).

A generator and a fresh learnable latent per batch are optimised together for the DeepInversion
terms (cross-entropy to targets, BatchNorm statistics) plus an adversarial term (the KL divergence
of student from teacher, maximised where the two agree) and CMI's contrastive term: two jittered
views of each synthesised input are told apart from every other input, past ones included (a
memory bank of embeddings: the teacher's penultimate features through a learned projection
head), which pushes the batches apart from each other. Settings (scaled to a 2-core budget): 100
generator steps per batch (the paper: 200-500) at lr 1e-3, bn 1, oh 1, adv 0.5, cr 0.8 at
temperature 0.1, a bank of 4,096 embeddings, jitter 2, one batch every 20 student updates; student
SGD at lr 0.01 (the CIFAR recipe's 0.1 stalls the BN-free LeNet-5-half), KD at temperature 20.
On exported teachers (BatchNorm folded) the BN term is absent.
With a sidecar: the class-conditional moment term (weight ``feature``) and the class prior.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import losses, method
from .base import BankMethod, agreement_mask


def _embedding(features: torch.Tensor) -> torch.Tensor:
    return features.mean(tuple(range(2, features.dim()))) if features.dim() > 2 else features


@method("cmi")
class CMI(BankMethod):
    """CMI: generator inversion with a contrastive diversity term over a memory bank (Fang et al. 2021)."""

    defaults = {"steps": 100, "lr_g": 1e-3, "nz": 256, "ngf": 16, "bn": 1.0, "oh": 1.0, "adv": 0.5, "cr": 0.8,
                "cr_temperature": 0.1, "embeddings": 4096, "jitter": 2, "every": 20, "synth_batch": 256,
                "bank": 50_000, "feature": 10.0}
    student = {"loss": "kd", "optimizer": "sgd", "lr": 0.01, "temperature": 20.0}

    def __init__(self, ctx, options, gen):
        super().__init__(ctx, options, gen)
        if ctx.features is None:
            self.opt["cr"] = 0.0  # no penultimate features to embed: the contrastive term cannot be formed
        self.generator = self.make_generator(int(self.opt["nz"]))
        self.taps = ctx.taps(features=True)
        self.head: nn.Module | None = None
        self.embeddings: torch.Tensor | None = None

    def _head(self, dim: int) -> nn.Module:
        if self.head is None:
            self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 128)).to(self.ctx.device)
        return self.head

    def synthesise(self, student, n):
        targets = self.ctx.sample_classes(n, self.gen)
        z = self.noise(n, int(self.opt["nz"])).requires_grad_(True)
        params = list(self.generator.parameters()) + [z]
        if self.opt["cr"]:
            with torch.no_grad():
                dim = _embedding(self.ctx.run(self.ctx.random_inputs(2, self.gen), self.taps)[self.ctx.features])
            params += list(self._head(dim.shape[1]).parameters())
        opt = torch.optim.Adam(params, lr=self.opt["lr_g"], betas=(0.5, 0.999))
        self.generator.train()
        for _ in self.synthesis_steps(int(self.opt["steps"])):
            x = self.ctx.clip(self.generator(z))
            views = torch.cat([self.jitter(x, int(self.opt["jitter"])), self.jitter(x, int(self.opt["jitter"]))])
            acts = self.ctx.run(views, self.taps)
            t = acts[self.ctx.logits][:n]
            first = {k: v[:n] for k, v in acts.items()}
            s = student(views[:n])
            terms = {"one_hot": self.opt["oh"] * F.cross_entropy(t, targets),
                     "bn": self.opt["bn"] * self.ctx.bn_loss(first),
                     "adversarial": -self.opt["adv"] * (losses.teacher_student_kl(s, t) * agreement_mask(s, t)).mean(),
                     "prior": self.prior_loss(first, targets)}
            if self.opt["cr"]:
                h = self.head(_embedding(acts[self.ctx.features]))
                terms["contrastive"] = self.opt["cr"] * losses.contrastive(h[:n], h[n:], self.embeddings,
                                                                           self.opt["cr_temperature"])
            loss = self.objective(terms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            x = self.ctx.clip(self.generator(z))
            if self.opt["cr"]:
                h = self.head(_embedding(self.ctx.run(x, self.taps)[self.ctx.features])).detach()
                bank = h if self.embeddings is None else torch.cat([self.embeddings, h])
                self.embeddings = bank[-int(self.opt["embeddings"]):]
        return x.detach()

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.state_dict(),
                "head": self.head.state_dict() if self.head is not None else {},
                "embeddings": self.embeddings if self.embeddings is not None else torch.zeros(0)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        if state.get("head"):
            first = state["head"]["0.weight"]
            self._head(first.shape[1]).load_state_dict(state["head"])
        emb = state.get("embeddings")
        self.embeddings = emb if emb is not None and len(emb) else None
