"""The training loop: ERM or IDEA on a split, early stopping on validation NDCG@10,
resumable checkpoints, and evaluation of the best state on every part.

The trainer knows nothing of Ray or MLflow: callers observe it through the
per-epoch callback and save/restore it through `save`/`load`.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from idea.config import RUNTIME_FIELDS, SELECT_METRIC, TrainConfig
from idea.environments import SubsequenceExtractors, make_environments, vrex
from idea.metrics import metrics_frame, rank_events, summary
from idea.precision import exact_float32, forward_precision, resolve_precision, set_tensor_cores
from idea.objectives import bce_loss, bce_scale_gradient, ce_scale_gradient, dros_loss, dros_propensity, irmv1
from idea.models import build_backbone
from idea.models.base import real_positions
from idea.splits import Events, Split


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or belongs to another model or split; the message says which."""


def split_identity(split: Split) -> dict:
    """What a checkpoint's weights are tied to (training and validation, not the test windows, which
    training never sees): a warm start or resume on another split is refused."""
    return {"dataset": split.dataset, "protocol": split.protocol, "n_items": split.n_items,
            "max_len": split.max_len, "data_sha256": split.data_sha256,
            "bounds": {part: list(split.bounds[part]) for part in ("train", "valid")}}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A trainer checkpoint, read with `weights_only=True` (tensors and plain containers, no code), onto the
    CPU: its RNG states must stay there, and loading a state dict copies weights onto the model's device."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, or a pickle holding objects other than tensors
        raise CheckpointError(f"{path} is not a readable trainer checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); was it written by this version's "
                              "Trainer.save? Re-create it by training again") from None
    if not isinstance(state, dict) or not {"config", "best_state", "split"} <= set(state):
        raise CheckpointError(f"{path} is not a trainer checkpoint (needs config, best_state and split); "
                              "write one with Trainer.save or `python -m idea.train --checkpoint`")
    return state


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a model state's names and tensor bytes: proves which weights a warm start began from."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_start(state: dict, config: TrainConfig, split: Split, path: str) -> None:
    """A warm start must come from the same backbone on the same split (items, max length, data, windows)."""
    saved = state["config"]
    wrong = [f"backbone {saved.get('backbone')!r} (this run: {config.backbone!r})"] \
        if saved.get("backbone") != config.backbone else []
    if saved.get("noise_ratio", 0.0) != config.noise_ratio:
        wrong.append(f"noise_ratio {saved.get('noise_ratio')} (this run: {config.noise_ratio})")
    if saved.get("fake_items") != config.fake_items:
        wrong.append(f"fake_items {saved.get('fake_items')} (this run: {config.fake_items})")
    mine = split_identity(split)
    wrong += [f"{k} {state['split'].get(k)!r} (this run: {v!r})" for k, v in mine.items() if state["split"].get(k) != v]
    if wrong:
        raise CheckpointError(f"cannot warm-start from {path}: it was trained with " + "; ".join(wrong))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def n_fake_items(n_items: int, noise_ratio: float, fake_items: int | None = None) -> int:
    """Size of the pool of never-seen fake item ids used for noise injection: `fake_items` when set (the
    official code keeps 1,000 rows even without noise), else max(100, n_items // 10), 0 without noise."""
    if fake_items is not None:
        return fake_items
    return max(100, n_items // 10) if noise_ratio > 0 else 0


def inject_noise(history: torch.Tensor, lengths: torch.Tensor, ratio: float, n_items: int, n_fake: int) -> torch.Tensor:
    """Replace round(ratio * length) real positions per row (stochastic rounding, so the expected
    share is exactly `ratio`) by random fake ids n_items+1..n_items+n_fake. Vectorised."""
    B, L = history.shape
    real = real_positions(lengths, L)  # [B, L]
    count = torch.floor(ratio * lengths + torch.rand(B, device=history.device)).long()  # [B]
    key = torch.rand(B, L, device=history.device).masked_fill(~real, 2.0)  # padding sorts last
    order = key.argsort(dim=1).argsort(dim=1)  # [B, L] rank of each position within its row
    replace = order < count.unsqueeze(1)  # [B, L]
    fake = torch.randint(n_items + 1, n_items + n_fake + 1, (B, L), device=history.device)
    return torch.where(replace, fake, history)  # [B, L]


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    phase: str  # erm | pretrain | idea
    train_loss: float
    valid: dict[str, float]  # summary of validation metrics (all targets)
    seconds: float  # training and validation
    train_seconds: float  # training steps only (RecBole's "train time")
    best_epoch: int  # 0 while no epoch could be selected yet (IDEA's pretraining)
    best_phase: str | None  # phase of best_epoch: erm, or idea (an IDEA run never selects a pretraining epoch)
    extra: dict[str, float] = field(default_factory=dict)  # IDEA: mean risk, risk variance

    def flat(self) -> dict[str, float | str | None]:
        return {"epoch": self.epoch, "phase": self.phase, "train_loss": self.train_loss, "epoch_seconds": self.seconds,
                "epoch_train_seconds": self.train_seconds, "best_epoch": self.best_epoch,
                "best_phase": self.best_phase, **self.extra, **self.valid}


class Trainer:
    """ERM or IDEA on one split. `fit` runs the epoch loop; `evaluate` scores the best state."""

    def __init__(self, config: TrainConfig, split: Split):
        self.config = config
        self.split = split
        seed_everything(config.seed)
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device, config.backbone)  # fp32 | tf32 | bf16
        self.n_items = split.n_items
        self.n_fake = n_fake_items(split.n_items, config.noise_ratio, config.fake_items)
        chunk_rows = 1 << 20 if self.device.type == "cuda" else 256  # GPUs: one launch beats length buckets
        self.model = build_backbone(config.backbone, split.n_items + self.n_fake, split.max_len, config.dropout,
                                    chunk_rows).to(self.device)
        if config.item_init == "normal":  # nn.Embedding's N(0, 1), which the official code's table keeps
            torch.nn.init.normal_(self.model.item_emb.weight)
            self.model._zero_padding_row()
        self.eval_batch_size = config.eval_batch_size or (1024 if self.device.type == "cuda" else 256)
        self.init_digest = None  # sha256 of the warm start's weights, when there is one
        if config.init_from is not None:  # before the optimiser: Adam starts fresh on the loaded weights
            start = read_checkpoint(config.init_from)
            check_start(start, config, split, config.init_from)
            self.model.load_state_dict(start["best_state"])
            self.init_digest = state_digest(self.model.state_dict())
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.extractors = None
        if config.method == "idea":
            self.extractors = SubsequenceExtractors(config.K, split.max_len, config.extractor_hidden,
                                                    config.extractor_keep_logit).to(self.device)
            self.ext_opt = torch.optim.Adam(self.extractors.parameters(), lr=config.extractor_lr)
        tr = split.train
        if config.method == "dros":
            self.propensity = dros_propensity(tr.target, split.n_items).to(self.device)  # [n]
        if len(tr) == 0:
            raise ValueError(f"split of {split.dataset!r} has no training events; check the cuts")
        # Copies: the split's arrays may be read-only views of Ray's shared memory.
        self.train_history = torch.tensor(tr.history, device=self.device)  # [E, L]
        self.train_lengths = torch.tensor(tr.lengths, device=self.device)  # [E]
        self.train_target = torch.tensor(tr.target, device=self.device)  # [E]
        self.epoch = 0
        self.step = 0
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.bad_epochs = 0
        self.records: list[EpochRecord] = []
        self.fit_seconds = 0.0  # wall clock of every epoch so far, training and validation

    # ----- one step -------------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        if self.config.method != "idea":
            return self.config.method  # erm | dros: one phase, a plain step on the method's loss
        return "pretrain" if epoch <= self.config.pretrain_epochs else "idea"

    def item_table(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        """[n_items + 1, d] embeddings of the real items of `model` (default: the trained one);
        evaluation never ranks fake noise ids (training does only with softmax_over "all")."""
        return (model or self.model).item_emb.weight[: self.n_items + 1]

    def per_example_loss(self, user: torch.Tensor, target: torch.Tensor,
                         scale_grad: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Loss [M] per row: full-softmax CE over items 1..n (softmax_over "all": over every row of the
        table, padding and fake rows too, as the official code), or BCE with one sampled negative, plus
        DROS's dros_alpha * L_DRO (over items 1..n) for method dros. With `scale_grad`, also each row's
        derivative [M] with respect to a scale w = 1 on its logits (IRMv1's dummy classifier)."""
        c = self.config
        table = self.item_table()
        first = 0 if c.softmax_over == "all" else 1  # item id scored by logit column 0
        # "all": the padding row is scored (logit 0) but kept out of training, so it stays the zero vector
        scored = torch.cat([table[:1].detach(), self.model.item_emb.weight[1:]]) if first == 0 else table[1:]  # [R, d]
        logits = user @ scored.T if c.loss == "ce" or c.method == "dros" else None  # [M, R]
        if c.loss == "ce":
            loss = F.cross_entropy(logits, target - first, reduction="none")  # [M]
            grad = ce_scale_gradient(logits, target + 1 - first) if scale_grad else None  # 1-based column
        else:
            negative = torch.randint(1, self.n_items + 1, target.shape, device=target.device)  # [M]
            pos = (user * table[target]).sum(-1)  # [M]
            neg = (user * table[negative]).sum(-1)  # [M]
            loss = bce_loss(pos, neg)  # [M]
            grad = bce_scale_gradient(pos, neg) if scale_grad else None
        if c.method == "dros" and c.dros_alpha > 0:
            items = logits[:, 1 - first: self.n_items + 1 - first]  # [M, n]
            loss = loss + c.dros_alpha * dros_loss(items, target, self.propensity, c.dros_beta)
        return (loss, grad) if scale_grad else loss

    def batch(self, idx: torch.Tensor, width: int | None = None, noisy: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training rows `idx` ordered by length (a batch is a set; the order lets the backbone
        encode short rows cheaply), trimmed to `width` (default: their longest history), with noise
        if configured."""
        idx = idx[self.train_lengths[idx].argsort()]  # [B]
        lengths = self.train_lengths[idx]  # [B]
        width = int(lengths.max()) if width is None else width
        history = self.train_history[idx, -width:]  # [B, width]
        if noisy and self.config.noise_ratio > 0:
            history = inject_noise(history, lengths, self.config.noise_ratio, self.n_items, self.n_fake)
        return history, lengths, self.train_target[idx]

    def erm_step(self, history, lengths, target) -> dict[str, torch.Tensor]:
        with forward_precision(self.precision, self.device):
            loss = self.per_example_loss(self.model(history, lengths), target).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def train_step(self, phase: str, history, lengths, target) -> dict[str, torch.Tensor]:
        """One optimisation step of `phase` (erm | pretrain | idea) on one batch; IDEA steps count
        `self.step`, and every T-th of them also moves the extractors (unless explore is off)."""
        if self.device.type == "cuda":
            set_tensor_cores(self.precision)  # per step: process-wide switches, which evaluation turns off
        if phase != "idea":
            return self.erm_step(history, lengths, target)
        self.step += 1
        return self.idea_step(history, lengths, target, explore=self.config.explore and self.step % self.config.T == 0)

    def idea_forward(self, history, lengths, target) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Risks [E] of the environments built from one batch (one forward pass for all of them), their
        IRMv1 scale gradients [E] (None under V-REx) and the environment batch env_x [E*B, L, d]."""
        c = self.config
        x = self.model.embed(history)  # [B, L, d]
        # Detached by default: the extractors read x but the recommender's loss never trains the item table
        # through the masks; extractor_input_grad lets it (official). Extractor steps move extractors only.
        masks = self.extractors(x if c.extractor_input_grad else x.detach(), lengths, c.tau)  # [K, B, L]
        views = masks.unsqueeze(-1) * x.unsqueeze(0)  # [K, B, L, d]
        env_x, env_len, env_tgt = make_environments(
            views, lengths, target, N=c.N, pairing=c.pairing, mixup=c.mixup, alpha=c.alpha,
            lambda_low=c.lambda_low, lambda_high=c.lambda_high, pair_draw=c.pair_draw, lambda_fold=c.lambda_fold,
        )  # [E*B, L, d], [E*B], [E*B]
        user = self.model.encode(env_x, env_len)  # [E*B, d]
        if c.penalty == "irmv1":
            loss, grad = self.per_example_loss(user, env_tgt, scale_grad=True)  # [E*B], [E*B]
            return loss.view(-1, len(target)).mean(1), grad.view(-1, len(target)).mean(1), env_x  # [E], [E]
        return self.per_example_loss(user, env_tgt).view(-1, len(target)).mean(1), None, env_x  # [E]

    def idea_gradients(self, history, lengths, target, recommend: bool = True,
                       explore: bool = False) -> tuple[tuple | None, tuple | None, dict[str, torch.Tensor]]:
        """(recommender grads of mean(R) + β·penalty, extractor grads of -penalty, step statistics)
        from one forward pass; a part not asked for is None. Descending both gradients makes the
        recommender minimise the penalised risk and the extractors maximise the penalty: var(R) for
        V-REx, mean_e (dR_e/dw)^2 for IRMv1.

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
        with forward_precision(self.precision, self.device):
            risks, scale_grads, env_x = self.idea_forward(history, lengths, target)  # risks in float32
        mean, var = vrex(risks, self.config.unbiased_var)
        penalty = var if scale_grads is None else irmv1(scale_grads)
        rec_loss = mean + self.config.beta * penalty
        rec_params = [p for p in self.model.parameters() if p.requires_grad]
        ext_params = list(self.extractors.parameters())
        rec_grads = ext_grads = None
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
        stats = {"loss": rec_loss.detach(), "risk_mean": mean.detach(), "risk_var": var.detach()}
        if scale_grads is not None:
            stats["irm_penalty"] = penalty.detach()
        return rec_grads, ext_grads, stats

    def idea_step(self, history, lengths, target, recommend: bool = True, explore: bool = False) -> dict[str, torch.Tensor]:
        """Apply `idea_gradients`: both are taken before either update, then each optimiser steps."""
        rec_grads, ext_grads, stats = self.idea_gradients(history, lengths, target, recommend, explore)
        for opt, module, grads in ((self.opt, self.model, rec_grads), (self.ext_opt, self.extractors, ext_grads)):
            if grads is not None:
                params = [p for p in module.parameters() if p.requires_grad]
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
        return stats

    # ----- epochs ---------------------------------------------------------------------------
    def permutation(self, epoch: int) -> torch.Tensor:
        """Loader order of `epoch`, derived from (seed, epoch) so a resumed run sees the same order."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_target), generator=g).to(self.device)

    def train_epoch(self, epoch: int, progress: bool = False) -> dict[str, float]:
        """One pass over the training events. Batch widths are computed on the host up front and
        losses are summed on the device, so a GPU step never waits for the host."""
        self.model.train()
        phase = self.phase(epoch)
        order = self.permutation(epoch)
        batches = order.split(self.config.batch_size)
        starts = np.arange(0, len(order), self.config.batch_size)
        widths = np.maximum.reduceat(self.split.train.lengths[order.cpu().numpy()], starts).tolist()
        sums: dict[str, torch.Tensor] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch} ({phase})", leave=False, file=sys.stderr)
        for idx, width in zip(batches, widths):
            out = self.train_step(phase, *self.batch(idx, width))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(out['loss']):.4f}")
        if bar is not None:
            bar.close()
        means = {k: float(v) / len(batches) for k, v in sums.items()}
        if not math.isfinite(means["loss"]):
            knobs = f"lr (now {self.config.lr})" + (f" or beta (now {self.config.beta})" if phase == "idea" else "")
            raise NonFiniteLossError(
                f"epoch {epoch}: the {phase} loss became {means['loss']}; training stopped. The best state so far "
                f"(epoch {self.best_epoch}) is kept; lower {knobs}"
            )
        return means

    def fit(self, on_epoch: Callable[[EpochRecord], None] | None = None, progress: bool = False,
            checkpoint: str | os.PathLike | None = None) -> list[EpochRecord]:
        """Train until `epochs` or early stopping (no validation NDCG@10 gain for `patience` epochs
        after pretraining). `on_epoch` sees every epoch's record; `checkpoint` is rewritten each epoch."""
        c = self.config
        while self.epoch < c.epochs and not self.stopped():
            start = time.perf_counter()
            epoch = self.epoch + 1
            losses = self.train_epoch(epoch, progress)
            train_time = time.perf_counter() - start
            valid = summary(self.evaluate_events(self.split.valid, "valid"), "valid")
            self.fit_seconds += time.perf_counter() - start
            self.epoch = epoch
            phase = self.phase(epoch)
            if phase != "pretrain":  # an IDEA run's best state is an IDEA epoch, never plain ERM pretraining
                if valid[SELECT_METRIC] > self.best_value:
                    self.best_value, self.best_epoch, self.bad_epochs = valid[SELECT_METRIC], epoch, 0
                    self.best_state = copy.deepcopy(self.model.state_dict())
                else:
                    self.bad_epochs += 1
            record = EpochRecord(epoch, phase, losses.pop("loss"), valid, time.perf_counter() - start, train_time,
                                 self.best_epoch, self.best_phase, losses)
            self.records.append(record)
            if checkpoint is not None:
                self.save(checkpoint)
            if on_epoch is not None:
                on_epoch(record)
        return self.records

    def stopped(self) -> bool:
        return self.bad_epochs >= self.config.patience

    @property
    def best_phase(self) -> str | None:
        """Phase of the selected epoch (None before any selectable epoch)."""
        return self.phase(self.best_epoch) if self.best_epoch else None

    # ----- evaluation -----------------------------------------------------------------------
    def best_model(self) -> torch.nn.Module:
        """A copy of the backbone with the best validation state's weights."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best_state)
        return model

    def evaluate_events(self, events: Events, part: str, model: torch.nn.Module | None = None) -> pd.DataFrame:
        """Metrics frame of one part for `model` (default: the current state), full ranking over all real items."""
        model = model or self.model
        model.eval()
        table = self.item_table(model)  # [n_items + 1, d]

        def score(history, lengths):
            return model(history, lengths) @ table.T  # [b, n_items + 1]

        with exact_float32(self.device):
            ranks = rank_events(score, events.history, events.lengths, events.target, device=self.device,
                                batch_size=self.eval_batch_size, mask_seen=self.config.mask_seen)
        return metrics_frame(ranks, events.warm, part)

    def evaluate(self, parts: list[str] | None = None) -> pd.DataFrame:
        """Best state on validation and every test part (all and warm targets)."""
        available = {"valid": self.split.valid, **self.split.tests}
        names = parts or list(available)
        unknown = sorted(set(names) - set(available))
        if unknown:
            raise ValueError(f"unknown part(s) {unknown}; available: {list(available)}")
        model = self.best_model()
        return pd.concat([self.evaluate_events(available[n], n, model) for n in names], ignore_index=True)

    # ----- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "config": self.config.to_dict(), "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "bad_epochs": self.bad_epochs, "fit_seconds": self.fit_seconds,
            "records": [vars(r) for r in self.records],
            "split": split_identity(self.split),
            "rng": {"python": random.getstate(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        if self.extractors is not None:
            state["extractors"] = self.extractors.state_dict()
            state["ext_opt"] = self.ext_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = {**TrainConfig().to_dict(), **state["config"]}  # fields added since the save have their defaults
        changed = sorted(k for k, v in self.config.to_dict().items() if k not in RUNTIME_FIELDS and saved[k] != v)
        if changed:
            raise CheckpointError(f"checkpoint was written with a different config (fields {changed}); refusing to resume")
        if state["split"] != split_identity(self.split):
            raise CheckpointError("checkpoint was written on a different split (data, items, max length or windows); "
                                  "refusing to resume")
        self.epoch, self.step = state["epoch"], state["step"]
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.extractors is not None:
            self.extractors.load_state_dict(state["extractors"])
            self.ext_opt.load_state_dict(state["ext_opt"])
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.best_state = state["best_state"]  # read onto the CPU (read_checkpoint); kept where the model is
        for name, tensor in self.best_state.items():
            self.best_state[name] = tensor.to(self.device)
        self.bad_epochs = state["bad_epochs"]
        self.fit_seconds = state["fit_seconds"]
        self.records = [EpochRecord(**r) for r in state["records"]]
        rng = state["rng"]
        random.setstate(rng["python"])
        _set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write: an interrupted save never replaces the last good checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(read_checkpoint(path))


def _numpy_rng_state() -> dict:
    """numpy's global RNG state as tensors and ints, which `weights_only` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(state: dict) -> None:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))
