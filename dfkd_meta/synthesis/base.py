"""The interface of an online synthesis method, and what its methods share."""
from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn

from .. import dist
from ..errors import DfkdError, UsageError
from .bank import MemoryBank
from .context import SynthesisContext
from .generators import InputGenerator


class NonFiniteLoss(DfkdError):
    """A loss became NaN or infinite; the online loop adds the iteration and the checkpoint kept."""

    def __init__(self, method: str, term: str):
        self.method, self.term = method, term
        super().__init__(f"{method}: {term} is not finite")


class Method:
    """One published data-free method: it supplies the batches the student is trained on.

    The distillation loop (``distill.online``) calls ``next_batch`` once per student update; the
    method runs its own synthesis in between (a generator step, input optimisation, a memory bank),
    reading the student where the method puts it in the loop. ``defaults`` are the method's
    settings, each overridable by name (``OnlineConfig.options``); ``student`` says how the paper
    trains the student (loss, optimiser, learning rate, temperature). ``deadline`` (a
    ``time.perf_counter`` reading, set by the loop under ``--minutes``) ends a synthesis round early:
    on a large teacher one round of input optimisation takes minutes, longer than a short budget.
    """

    name = ""
    defaults: dict[str, float] = {}
    student = {"loss": "kd", "optimizer": "adam", "lr": 2e-3, "temperature": 1.0}

    def __init__(self, ctx: SynthesisContext, options: dict[str, float], gen: torch.Generator):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise UsageError(f"{{options}} {unknown}: {self.name} has the settings {sorted(self.defaults)}")
        self.ctx, self.gen = ctx, gen
        self.opt = {**self.defaults, **options}
        self.deadline: float | None = None

    def synthesis_steps(self, steps: int) -> Iterator[int]:
        """The step indices of one synthesis round of ``steps``: all of them or, once ``deadline`` has passed, those
        begun so far (at least one: the round's batch is then less optimised, and the loop ends the run after it)."""
        for step in range(steps):
            # the main process's clock decides, so every process runs the same steps (their collectives pair up)
            if step and self.deadline is not None and dist.from_main(float(time.perf_counter() >= self.deadline)):
                return
            yield step

    def next_batch(self, student: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` inputs and the teacher's logits on them, for the next student update."""
        raise NotImplementedError

    def synthetic_set(self, n: int) -> torch.Tensor:
        """``n`` inputs as the method would give the student now (for ``--save-transfer``)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # shared pieces -------------------------------------------------------------------------------
    def objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the synthesis objective's named ``terms``; a non-finite sum stops the run at once, naming the
        first non-finite term (a run that continues from NaN only destroys the generator and the student)."""
        total = sum(terms.values(), torch.zeros((), device=self.ctx.device))
        if not torch.isfinite(total):
            bad = next((k for k, v in terms.items() if not torch.isfinite(v).all()), "sum")
            raise NonFiniteLoss(self.name, f"the synthesis term {bad!r}")
        return total

    def prior_loss(self, acts: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        """The sidecar's class-conditional feature prior, weighted (0 without a sidecar)."""
        if self.ctx.moments is None:
            return torch.zeros((), device=self.ctx.device)
        return self.opt.get("feature", 0.0) * self.ctx.moment_loss(acts, classes)

    def make_generator(self, nz: int) -> InputGenerator:
        """The method's generator; width ``ngf`` (the papers' 64 costs ~270x a LeNet-5 forward per image on
        32x32 inputs, so the default here is 16: a documented deviation to fit a CPU budget)."""
        image = self.ctx.image_view.image_shape if self.ctx.image_view is not None else None
        return InputGenerator(self.ctx.input_shape, image, nz, int(self.opt.get("ngf", 16))).to(self.ctx.device)

    def noise(self, n: int, nz: int) -> torch.Tensor:
        return torch.randn((n, nz), generator=self.gen).to(self.ctx.device)

    def jitter(self, x: torch.Tensor, pixels: int) -> torch.Tensor:
        """A random shift of the images behind ``x`` by up to ``pixels`` (identity for feature vectors)."""
        view = self.ctx.image_view
        if not pixels or view is None:
            return x
        dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=self.gen))
        return view.from_image(torch.roll(view.to_image(x), shifts=(dy, dx), dims=(-2, -1)))

    def image_prior(self, x: torch.Tensor) -> torch.Tensor:
        """TV (l2) and L2 priors of DeepInversion, weighted by ``tv`` and ``l2`` (TV only for images)."""
        from . import losses

        total = self.opt.get("l2", 0.0) * x.pow(2).mean()
        if self.ctx.image_view is not None and self.opt.get("tv", 0.0):
            total = total + self.opt["tv"] * losses.total_variation(self.ctx.image_view.to_image(x))
        return total


class BankMethod(Method):
    """A method that synthesises a batch every ``every`` student updates into a memory bank and trains the
    student on samples from all of it (DeepInversion, CMI, FastDFKD)."""

    def __init__(self, ctx, options, gen):
        super().__init__(ctx, options, gen)
        self.bank = MemoryBank(int(self.opt.get("bank", 50_000)))
        self.calls = 0

    def synthesise(self, student: nn.Module, n: int) -> torch.Tensor:
        raise NotImplementedError

    def next_batch(self, student, n):
        if self.calls % int(self.opt["every"]) == 0 or len(self.bank) == 0:
            was_training = student.training
            student.eval()
            # under several processes each synthesises its share of the batch into its own bank
            x = self.synthesise(student, dist.share(int(self.opt["synth_batch"])) if "synth_batch" in self.opt else n)
            student.train(was_training)
            self.bank.add(x, self.ctx.teacher_logits(x))
        self.calls += 1
        x, logits = self.bank.sample(n, self.gen)
        return x.to(self.ctx.device), logits.to(self.ctx.device)

    def synthetic_set(self, n):
        return self.bank.x[-n:]

    def state_dict(self):
        return {"bank": self.bank.state_dict(), "calls": self.calls}

    def load_state_dict(self, state):
        self.bank.load_state_dict(state.get("bank", {}))
        self.calls = int(state.get("calls", 0))


def agreement_mask(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """1 where student and teacher pick the same class (CMI's and FastDFKD's adversarial term acts there)."""
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
