"""One object per training method (RecBole's `calculate_loss` idea), so the Trainer runs any of them
without asking which: ERM, IDEA and DROS share ERM's interface.

- `step(ctx, phase, history, lengths, target)`: one optimisation step on one batch; statistics out.
- `phase(epoch)`: the name of an epoch's phase, and `selectable(phase)`: may it give the best state.
- `per_example_loss(ctx, user, target)`: the method's loss per row.
- `state_dict()` / `load_state_dict(state)`: what the method owns, at the top level of the trainer's
  checkpoint (IDEA: `extractors`, `ext_opt`, `step`), where checkpoints have always kept it.
- `epoch_telemetry()`: statistics of the epoch just trained that are not means over its steps (IDEA:
  the median penalty share, the extractor updates so far); the step statistics are averaged by the trainer.

A method reads its configuration from the TrainConfig it was built with; the fields only it reads are
`idea.config.METHOD_FIELDS[name]` (tests/idea/test_methods.py checks both ways). The Trainer owns the
recommender, its optimiser, the precision, the loop, early stopping, checkpoints and evaluation; a method
sees only the `StepContext` (idea/step_context.py) it is passed at each call: the recommender, its
optimiser, the precision, the device and the item count. This module never imports the trainer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from idea.config import TrainConfig
from idea.contract import keep_rate_key
from idea.environments import SubsequenceExtractors, make_environments, vrex
from idea.objectives import bce_loss, bce_scale_gradient, ce_scale_gradient, dros_loss, dros_propensity, irmv1
from idea.precision import forward_precision
from idea.splits import Split
from idea.step_context import StepContext


class ERM:
    """Empirical risk minimisation: mean loss over the batch, one phase. The base of the other methods,
    whose interface it defines; it owns no state."""

    name = "erm"
    scores_all_items = False  # whether `extra_loss` reads the logits of every real item

    def __init__(self, config: TrainConfig, split: Split, device: torch.device):
        self.config = config  # every field a method reads comes from here

    def phase(self, epoch: int) -> str:
        return self.name

    def selectable(self, phase: str) -> bool:
        """Whether an epoch of `phase` may become the best state."""
        return True

    def unstable_fields(self, phase: str) -> tuple[str, ...]:
        """Config fields besides lr to lower when the loss of `phase` diverges."""
        return ()

    def per_example_loss(self, ctx: StepContext, user: Tensor, target: Tensor,
                         scale_grad: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Loss [M] per row: full-softmax CE over items 1..n (softmax_over "all": over every row of the
        table, padding and fake rows too, as the official code), or BCE with one sampled negative, plus
        the method's `extra_loss`. With `scale_grad`, also each row's derivative [M] with respect to a
        scale w = 1 on its logits (IRMv1's dummy classifier)."""
        c = self.config
        table = ctx.item_table()
        first = 0 if c.softmax_over == "all" else 1  # item id scored by logit column 0
        # "all": the padding row is scored (logit 0) but kept out of training, so it stays the zero vector
        scored = torch.cat([table[:1].detach(), ctx.model.item_emb.weight[1:]]) if first == 0 else table[1:]  # [R, d]
        logits = user @ scored.T if c.loss == "ce" or self.scores_all_items else None  # [M, R]
        if c.loss == "ce":
            loss = F.cross_entropy(logits, target - first, reduction="none")  # [M]
            grad = ce_scale_gradient(logits, target + 1 - first) if scale_grad else None  # 1-based column
        else:
            negative = torch.randint(1, ctx.n_items + 1, target.shape, device=target.device)  # [M]
            pos = (user * table[target]).sum(-1)  # [M]
            neg = (user * table[negative]).sum(-1)  # [M]
            loss = bce_loss(pos, neg)  # [M]
            grad = bce_scale_gradient(pos, neg) if scale_grad else None
        if self.scores_all_items:
            items = logits[:, 1 - first: ctx.n_items + 1 - first]  # [M, n] items 1..n
            extra = self.extra_loss(items, target)  # [M] or None
            loss = loss if extra is None else loss + extra
        return (loss, grad) if scale_grad else loss

    def extra_loss(self, items: Tensor, target: Tensor) -> Tensor | None:
        """A term [M] added to the base loss, from the logits `items` [M, n] of the real items 1..n;
        called only when `scores_all_items`."""
        return None

    def step(self, ctx: StepContext, phase: str, history: Tensor, lengths: Tensor, target: Tensor) -> dict[str, Tensor]:
        """One plain step of the recommender on the batch's mean loss."""
        with forward_precision(ctx.precision, ctx.device):
            loss = self.per_example_loss(ctx, ctx.model(history, lengths), target).mean()
        ctx.opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.opt.step()
        return {"loss": loss.detach()}

    def epoch_telemetry(self) -> dict[str, float]:
        """Statistics of the epoch just trained besides the means of `step`'s (ERM has none)."""
        return {}

    def state_dict(self) -> dict:
        """Every checkpoint has a `step` (IDEA's step counter), 0 for the methods without one."""
        return {"step": 0}

    def load_state_dict(self, state: dict) -> None:
        """Read this method's part of a trainer checkpoint (ERM has none)."""


class DROS(ERM):
    """DROS (Yang et al., SIGIR'23): ERM's loss plus dros_alpha * L_DRO, weighted by the popularity
    propensity of the training targets (fixed, so not in checkpoints)."""

    name = "dros"
    scores_all_items = True

    def __init__(self, config: TrainConfig, split: Split, device: torch.device):
        super().__init__(config, split, device)
        self.propensity = dros_propensity(split.train.target, split.n_items).to(device)  # [n]

    def extra_loss(self, items: Tensor, target: Tensor) -> Tensor | None:
        c = self.config
        return c.dros_alpha * dros_loss(items, target, self.propensity, c.dros_beta) if c.dros_alpha > 0 else None


class IDEA(ERM):
    """IDEA: `pretrain_epochs` of ERM, then steps on mean(R) + β·penalty over environments mixed from
    the views of K learned subsequence extractors, which every T-th IDEA step ascend the penalty.
    Owns the extractors, their optimiser and the IDEA step counter.

    Its step statistics say whether the mechanism acts (docs/design.md, "Mechanism telemetry"): the
    extractors' keep rates and disagreement, the mixing weight drawn, the risk variance; every
    SHARE_EVERY-th step of an epoch (its first included) also the penalty's share of the recommender's
    gradient, which costs one more backward pass."""

    name = "idea"
    SHARE_EVERY = 10

    def __init__(self, config: TrainConfig, split: Split, device: torch.device):
        super().__init__(config, split, device)
        self.extractors = SubsequenceExtractors(config.K, split.max_len, config.extractor_hidden,
                                                config.extractor_keep_logit, config.extractor_align).to(device)
        self.ext_opt = torch.optim.Adam(self.extractors.parameters(), lr=config.extractor_lr)
        self.steps = 0  # IDEA steps taken (pretraining steps are not counted)
        self._epoch_steps = 0  # IDEA steps of the epoch in progress
        self._shares: list[Tensor] = []  # the penalty shares measured in it

    def phase(self, epoch: int) -> str:
        return "pretrain" if epoch <= self.config.pretrain_epochs else "idea"

    def selectable(self, phase: str) -> bool:
        return phase != "pretrain"  # an IDEA run's best state is an IDEA epoch, never plain ERM pretraining

    def unstable_fields(self, phase: str) -> tuple[str, ...]:
        return ("beta",) if phase == "idea" else ()

    def step(self, ctx: StepContext, phase: str, history: Tensor, lengths: Tensor, target: Tensor) -> dict[str, Tensor]:
        """A plain ERM step outside the IDEA phase; in it, IDEA steps count `steps`, and every T-th of them
        also moves the extractors (unless explore is off)."""
        if phase != "idea":
            return super().step(ctx, phase, history, lengths, target)
        self.steps += 1
        c = self.config
        measure = self._epoch_steps % self.SHARE_EVERY == 0
        self._epoch_steps += 1
        stats = self.idea_step(ctx, history, lengths, target, explore=c.explore and self.steps % c.T == 0,
                               measure_share=measure)
        if measure:
            self._shares.append(stats.pop("penalty_share"))
        return stats

    def extractor_steps(self) -> int:
        """Extractor updates so far: every T-th IDEA step explores, unless exploration is off."""
        return self.steps // self.config.T if self.config.explore else 0

    def epoch_telemetry(self) -> dict[str, float]:
        """The median penalty share over the epoch's measured steps and the extractor updates so far; nothing
        for an epoch without IDEA steps (pretraining)."""
        if not self._shares:
            return {}
        share = float(torch.stack(self._shares).median())
        self._shares, self._epoch_steps = [], 0
        return {"penalty_share": share, "extractor_steps": float(self.extractor_steps())}

    def idea_forward(self, ctx: StepContext, history: Tensor, lengths: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor | None, Tensor, dict[str, Tensor]]:
        """Risks [E] of the environments built from one batch (one forward pass for all of them), their
        IRMv1 scale gradients [E] (None under V-REx), the environment batch env_x [E*B, L, d] and the
        views' statistics (`view_telemetry`)."""
        c = self.config
        x = ctx.model.embed(history)  # [B, L, d]
        # Detached by default: the extractors read x but the recommender's loss never trains the item table
        # through the masks; extractor_input_grad lets it (official). Extractor steps move extractors only.
        masks = self.extractors(x if c.extractor_input_grad else x.detach(), lengths, c.tau)  # [K, B, L]
        views = masks.unsqueeze(-1) * x.unsqueeze(0)  # [K, B, L, d]
        env_x, env_len, env_tgt, lam = make_environments(
            views, lengths, target, N=c.N, pairing=c.pairing, mixup=c.mixup, alpha=c.alpha,
            lambda_low=c.lambda_low, lambda_high=c.lambda_high, pair_draw=c.pair_draw, lambda_fold=c.lambda_fold,
        )  # [E*B, L, d], [E*B], [E*B], [E*B] or None
        seen = view_telemetry(masks, lengths, lam)
        user = ctx.model.encode(env_x, env_len)  # [E*B, d]
        if c.penalty == "irmv1":
            loss, grad = self.per_example_loss(ctx, user, env_tgt, scale_grad=True)  # [E*B], [E*B]
            return loss.view(-1, len(target)).mean(1), grad.view(-1, len(target)).mean(1), env_x, seen  # [E], [E]
        return self.per_example_loss(ctx, user, env_tgt).view(-1, len(target)).mean(1), None, env_x, seen  # [E]

    def idea_gradients(self, ctx: StepContext, history: Tensor, lengths: Tensor, target: Tensor,
                       recommend: bool = True, explore: bool = False,
                       measure_share: bool = False) -> tuple[tuple | None, tuple | None, dict[str, Tensor]]:
        """(recommender grads of mean(R) + β·penalty, extractor grads of -penalty, step statistics)
        from one forward pass; a part not asked for is None. Descending both gradients makes the
        recommender minimise the penalised risk and the extractors maximise the penalty: var(R) for
        V-REx, mean_e (dR_e/dw)^2 for IRMv1. With `measure_share` (and `recommend`) the statistics also
        hold `penalty_share` = ||β ∇penalty|| / ||∇mean(R)|| over the recommender's parameters, from one
        more backward pass (β·penalty's own; the mean's is the rest of the recommender's gradient).

        Under V-REx the exploration gradient reuses the recommender's backward pass. Row r of env_x
        belongs to environment n alone, so the recommender's gradient at env_x is, per environment block,
        a_n · dR_n/d env_x with a = d(mean + β var)/dR; rescaling block n by c_n / a_n, c = d(-var)/dR,
        gives the extractors' gradient at env_x, and only the cheap path env_x -> masks -> extractors
        is walked again (with extractor_input_grad the masks also lead on to the item table, but that
        walk asks for the extractors' parameters only, and the table's gradient through the masks is
        part of the recommender's pass). a and c are autograd's own derivatives (c sums to zero exactly
        as autograd's does, so no gradient of mean(R) leaks in), and the backward pass is seeded with that very a,
        so the rescaling is exact up to float rounding. When some |a_n| < 0.1/N (large β), where
        the products a_n · (small probabilities) lose precision, a separate backward pass of -var
        through the backbone is taken instead, as it always is for IRMv1 (whose penalty is not a
        function of the risks alone).
        """
        with forward_precision(ctx.precision, ctx.device):
            risks, scale_grads, env_x, seen = self.idea_forward(ctx, history, lengths, target)  # risks in float32
        mean, var = vrex(risks, self.config.unbiased_var)
        penalty = var if scale_grads is None else irmv1(scale_grads)
        rec_loss = mean + self.config.beta * penalty
        rec_params = [p for p in ctx.model.parameters() if p.requires_grad]
        ext_params = list(self.extractors.parameters())
        rec_grads = ext_grads = pen_grads = None
        if measure_share and recommend:
            pen_grads = torch.autograd.grad(self.config.beta * penalty, rec_params, retain_graph=True,
                                            allow_unused=True)
        shortcut = recommend and scale_grads is None
        if shortcut:
            a = torch.autograd.grad(rec_loss, risks, retain_graph=True)[0]  # [E] d rec_loss / dR
            grads = torch.autograd.grad(risks, rec_params + [env_x], grad_outputs=a, retain_graph=explore,
                                        allow_unused=True)
            rec_grads, env_grad = grads[:-1], grads[-1]
        elif recommend:
            rec_grads = torch.autograd.grad(rec_loss, rec_params, retain_graph=explore, allow_unused=True)
        if explore:
            if shortcut and bool((a.abs() >= 0.1 / len(risks)).all()):
                c = torch.autograd.grad(-var, risks, retain_graph=True)[0]  # [E] d(-var) / dR
                scale = (c / a).repeat_interleave(len(target)).view(-1, 1, 1)  # [E*B, 1, 1]
                ext_grads = torch.autograd.grad(env_x, ext_params, grad_outputs=env_grad * scale)
            else:
                ext_grads = torch.autograd.grad(-penalty, ext_params)
        stats = {"loss": rec_loss.detach(), "risk_mean": mean.detach(), "risk_var": var.detach(), **seen}
        if scale_grads is not None:
            stats["irm_penalty"] = penalty.detach()
        if pen_grads is not None:
            stats["penalty_share"] = penalty_share(rec_grads, pen_grads)
        return rec_grads, ext_grads, stats

    def idea_step(self, ctx: StepContext, history: Tensor, lengths: Tensor, target: Tensor,
                  recommend: bool = True, explore: bool = False, measure_share: bool = False) -> dict[str, Tensor]:
        """Apply `idea_gradients`: both are taken before either update, then each optimiser steps."""
        rec_grads, ext_grads, stats = self.idea_gradients(ctx, history, lengths, target, recommend, explore,
                                                          measure_share)
        for opt, module, grads in ((ctx.opt, ctx.model, rec_grads), (self.ext_opt, self.extractors, ext_grads)):
            if grads is not None:
                params = [p for p in module.parameters() if p.requires_grad]
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
        return stats

    def state_dict(self) -> dict:
        return {"step": self.steps, "extractors": self.extractors.state_dict(), "ext_opt": self.ext_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["step"]
        self.extractors.load_state_dict(state["extractors"])
        self.ext_opt.load_state_dict(state["ext_opt"])


@torch.no_grad()
def view_telemetry(masks: Tensor, lengths: Tensor, lam: Tensor | None) -> dict[str, Tensor]:
    """What the extractors did to one batch: `keep_rate_<k>`, the share of real positions mask k keeps
    (its mean value there); `mask_disagreement`, the mean |m_i - m_j| over real positions and pairs of
    distinct extractors (0: K copies of one view; 1: binary masks that never agree); `lambda_dominant`, the
    mean weight max(λ, 1 - λ) of the dominant view (absent without mixup). masks [K, B, L] (0 at padding)."""
    K = len(masks)
    real = lengths.sum().to(masks.dtype)  # real positions in the batch
    keep = masks.sum((1, 2)) / real  # [K]
    out = {keep_rate_key(k): keep[k] for k in range(K)}
    apart = (masks.unsqueeze(0) - masks.unsqueeze(1)).abs().sum((2, 3))  # [K, K], zero diagonal
    out["mask_disagreement"] = apart.sum() / (K * (K - 1) * real)
    if lam is not None:
        out["lambda_dominant"] = torch.maximum(lam, 1.0 - lam).mean()
    return out


def penalty_share(rec_grads: tuple, pen_grads: tuple) -> Tensor:
    """||β ∇penalty|| / ||∇mean(R)|| from the recommender's gradient of mean + β·penalty and β·penalty's own
    (parameters without a gradient, None, count as zero)."""
    def norm(grads: list[Tensor]) -> Tensor:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    pen = [g for g in pen_grads if g is not None]
    rest = [r - p if p is not None else r for r, p in zip(rec_grads, pen_grads) if r is not None]
    return norm(pen) / norm(rest) if pen else torch.zeros((), device=rest[0].device)


METHOD_OBJECTS: dict[str, type[ERM]] = {m.name: m for m in (ERM, IDEA, DROS)}
