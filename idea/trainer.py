"""The training loop: any method of idea/methods.py on a split, early stopping on validation NDCG@10,
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

from idea.config import RUNTIME_FIELDS, TrainConfig
from idea.contract import EPOCH_SECONDS, SELECT_METRIC
from idea.methods import METHOD_OBJECTS
from idea.metrics import metrics_frame, rank_events, summary
from idea.precision import exact_float32, resolve_precision, set_tensor_cores
from idea.models import build_backbone
from idea.models.base import real_item_table, real_positions
from idea.splits import Events, Split, mask_side_items
from idea.step_context import StepContext

PROGRESS_EVERY = 50  # batches between the progress bar's loss readings (each waits for the device)


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
    phase: str  # the method's (idea/methods.py): erm | dros | pretrain | idea
    train_loss: float
    valid: dict[str, float]  # summary of validation metrics (all targets)
    seconds: float  # training and validation
    train_seconds: float  # training steps only (RecBole's "train time")
    best_epoch: int  # 0 while no epoch could be selected yet (IDEA's pretraining)
    best_phase: str | None  # phase of best_epoch: erm, dros, or idea (an IDEA run never selects a pretraining epoch)
    extra: dict[str, float] = field(default_factory=dict)  # IDEA: risks and mechanism telemetry (idea/contract.py)

    def flat(self) -> dict[str, float | str | None]:
        return {"epoch": self.epoch, "phase": self.phase, "train_loss": self.train_loss, EPOCH_SECONDS: self.seconds,
                "epoch_train_seconds": self.train_seconds, "best_epoch": self.best_epoch,
                "best_phase": self.best_phase, **self.extra, **self.valid}


class Trainer:
    """One method (`objective`, idea/methods.py) on one split. `fit` runs the epoch loop; `evaluate`
    scores the best state."""

    def __init__(self, config: TrainConfig, split: Split):
        self.config = config
        self.split = mask_side_items(split) if config.mask_side_items else split
        seed_everything(config.seed)
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device, config.backbone)  # fp32 | tf32 | bf16
        self.n_items = split.n_items
        self.n_fake = n_fake_items(split.n_items, config.noise_ratio, config.fake_items)
        # rows: one pass on a GPU (length classes there are still to be timed: docs/speed.md), 256-row blocks on a CPU
        chunk_rows = 1 << 20 if self.device.type == "cuda" else 256
        buckets = "rows" if config.buckets == "auto" else config.buckets
        self.model = build_backbone(config.backbone, split.n_items + self.n_fake, split.max_len, config.dropout,
                                    chunk_rows, buckets).to(self.device)
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
        # The method's own parts (IDEA's extractors draw their initial weights here, after the backbone's, as always)
        self.objective = METHOD_OBJECTS[config.method](config, self.split, self.device)
        tr = self.split.train
        if len(tr) == 0:
            raise ValueError(f"split of {split.dataset!r} has no training events; check the cuts")
        # Copies: the split's arrays may be read-only views of Ray's shared memory.
        self.train_history = torch.tensor(tr.history, device=self.device)  # [E, L]
        self.train_lengths = torch.tensor(tr.lengths, device=self.device)  # [E]
        self.train_target = torch.tensor(tr.target, device=self.device)  # [E]
        self.epoch = 0
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.bad_epochs = 0
        self.records: list[EpochRecord] = []
        self.fit_seconds = 0.0  # wall clock of every epoch so far, training and validation

    # ----- one step -------------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        return self.objective.phase(epoch)

    def item_table(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        """[n_items + 1, d] embeddings of the real items of `model` (default: the trained one)."""
        return real_item_table(model or self.model, self.n_items)

    def step_context(self) -> StepContext:
        """What the method's steps may use, from the trainer's state now (a test may change the precision)."""
        return StepContext(self.model, self.opt, self.precision, self.device, self.n_items)

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

    def train_step(self, phase: str, history, lengths, target) -> dict[str, torch.Tensor]:
        """One optimisation step of the method's `phase` on one batch (the method's `step`)."""
        if self.device.type == "cuda":
            set_tensor_cores(self.precision)  # per step: process-wide switches, which evaluation turns off
        return self.objective.step(self.step_context(), phase, history, lengths, target)

    # ----- epochs ---------------------------------------------------------------------------
    def permutation(self, epoch: int) -> torch.Tensor:
        """Loader order of `epoch`, derived from (seed, epoch) so a resumed run sees the same order."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_target), generator=g).to(self.device)

    def epoch_batches(self, epoch: int) -> list[tuple[torch.Tensor, int]]:
        """`epoch`'s batches: row indices (on the device) and each batch's width, its longest history,
        computed on the host up front, so building a batch (`batch(idx, width)`) never waits on the device."""
        order = self.permutation(epoch)  # [E]
        starts = np.arange(0, len(order), self.config.batch_size)
        widths = np.maximum.reduceat(self.split.train.lengths[order.cpu().numpy()], starts).tolist()
        return list(zip(order.split(self.config.batch_size), widths))

    def train_epoch(self, epoch: int, progress: bool = False) -> dict[str, float]:
        """One pass over the training events. Losses are summed on the device, so a GPU step never
        waits for the host (a progress bar reads the loss every `PROGRESS_EVERY` batches)."""
        self.model.train()
        phase = self.phase(epoch)
        batches = self.epoch_batches(epoch)
        sums: dict[str, torch.Tensor] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch} ({phase})", leave=False, file=sys.stderr)
        for i, (idx, width) in enumerate(batches):
            out = self.train_step(phase, *self.batch(idx, width))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            if bar is not None:
                bar.update(1)
                if i % PROGRESS_EVERY == 0:
                    bar.set_postfix(loss=f"{float(out['loss']):.4f}")
        if bar is not None:
            bar.close()
        means = {k: float(v) / len(batches) for k, v in sums.items()} | self.objective.epoch_telemetry()
        if not math.isfinite(means["loss"]):
            knobs = " or ".join(f"{name} (now {getattr(self.config, name)})"
                                for name in ("lr", *self.objective.unstable_fields(phase)))
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
            if self.objective.selectable(phase):
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
            "config": self.config.to_dict(), "epoch": self.epoch,
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "bad_epochs": self.bad_epochs, "fit_seconds": self.fit_seconds,
            "records": [vars(r) for r in self.records],
            "split": split_identity(self.split),
            "rng": {"python": random.getstate(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        state.update(self.objective.state_dict())  # the method's own keys (IDEA: step, extractors, ext_opt)
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = {**TrainConfig().to_dict(), **state["config"]}  # fields added since the save have their defaults
        changed = sorted(k for k, v in self.config.to_dict().items() if k not in RUNTIME_FIELDS and saved[k] != v)
        if changed:
            raise CheckpointError(f"checkpoint was written with a different config (fields {changed}); refusing to resume")
        if state["split"] != split_identity(self.split):
            raise CheckpointError("checkpoint was written on a different split (data, items, max length or windows); "
                                  "refusing to resume")
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.objective.load_state_dict(state)
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
