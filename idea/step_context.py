"""What a training method (idea/methods.py) may use of the trainer's state: the recommender, its
optimiser, the precision and device of training steps, and the real item count. The trainer passes
one to every step, so a method never sees the loop, checkpoints or evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from idea.config import PRECISIONS
from idea.models.base import Backbone, real_item_table

STEP_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")  # resolved by idea.precision.resolve_precision


@dataclass(frozen=True, eq=False)
class StepContext:
    """The recommender and how to train it: `opt` steps `model`; `precision` and `device` set each step's
    forward pass; items 1..`n_items` are real, the table's rows after them fake noise ids."""

    model: Backbone
    opt: torch.optim.Optimizer
    precision: str
    device: torch.device
    n_items: int

    def __post_init__(self) -> None:
        if not isinstance(self.model, Backbone):
            raise TypeError(f"StepContext.model must be a Backbone, got {type(self.model).__name__}")
        if not isinstance(self.opt, torch.optim.Optimizer):
            raise TypeError(f"StepContext.opt must be a torch optimiser, got {type(self.opt).__name__}")
        if self.precision not in STEP_PRECISIONS:
            raise ValueError(f"StepContext.precision = {self.precision!r}: allowed {STEP_PRECISIONS}")
        if not isinstance(self.device, torch.device):
            raise TypeError(f"StepContext.device must be a torch.device, got {type(self.device).__name__}")
        if not (isinstance(self.n_items, int) and not isinstance(self.n_items, bool) and self.n_items >= 1):
            raise ValueError(f"StepContext.n_items = {self.n_items!r}: allowed an integer >= 1")

    def item_table(self) -> Tensor:
        """[n_items + 1, d] the trained recommender's rows of padding and the real items."""
        return real_item_table(self.model, self.n_items)
