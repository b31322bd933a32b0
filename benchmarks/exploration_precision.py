"""Precision of IDEA's exploration gradient in float32 against a float64 autograd reference.

On Beauty temporal training batches and an ERM-trained GRU4Rec (from penalty_scale.py's --model;
dropout 0 so that both precisions see the same draws), for each β: the extractors' gradient of
-var(R) as the trainer takes it (`IDEA.idea_gradients` in idea/methods.py, sharing the recommender's backward pass,
or a separate pass where some |a_n| < 0.1/N) and as plain float32 autograd takes it, each as the
relative error ||g - g64|| / ||g64|| against float64 autograd on the same draws.

    python benchmarks/exploration_precision.py --data-dir path/to/data --model outputs/bench/beauty-erm.pt
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch

from idea.argparsing import StrictArgumentParser
from idea.config import TrainConfig
from idea.data import load_split
from idea.environments import vrex
from idea.trainer import Trainer


def rel_error(got, ref) -> float:
    num = sum(float(((g.double() - r) ** 2).sum()) for g, r in zip(got, ref))
    return (num / sum(float((r ** 2).sum()) for r in ref)) ** 0.5


def minus_var_grad(trainer: Trainer, batch, seed: int):
    torch.manual_seed(seed)
    risks = trainer.objective.idea_forward(trainer.step_context(), *batch)[0]
    return torch.autograd.grad(-vrex(risks)[1], list(trainer.objective.extractors.parameters())), risks.detach()


def main() -> None:
    p = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--model", type=Path, default=Path("outputs/bench/beauty-erm.pt"))
    p.add_argument("--betas", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    p.add_argument("--batches", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(2)
    _, split = load_split("beauty", args.data_dir)
    state = torch.load(args.model, weights_only=True)
    print(f"extractor gradient of -var(R), relative error vs float64 autograd over {args.batches} batches of 2048 "
          "(median, max)")
    print(f"{'beta':>6} {'trainer (float32)':>22} {'plain autograd (float32)':>26} {'separate passes':>16}")
    for beta in args.betas:
        cfg = TrainConfig(method="idea", pretrain_epochs=0, beta=beta, dropout=0.0, device="cpu")
        t32 = Trainer(cfg, split)
        t32.model.load_state_dict(state)
        t64 = copy.deepcopy(t32)
        t64.model.double()
        t64.objective.extractors.double()
        t32.model.train()
        t64.model.train()
        ours, plain, fallbacks = [], [], 0
        for i, idx in enumerate(t32.permutation(1).split(cfg.batch_size)[: args.batches]):
            batch = t32.batch(idx)
            ref, risks = minus_var_grad(t64, batch, seed=i)
            torch.manual_seed(i)
            _, got, _ = t32.objective.idea_gradients(t32.step_context(), *batch, recommend=True, explore=True)
            a = 1.0 / cfg.N + 2.0 * beta * (risks - risks.mean()) / cfg.N
            fallbacks += int((a.abs() < 0.1 / cfg.N).any())
            ours.append(rel_error(got, ref))
            plain.append(rel_error(minus_var_grad(t32, batch, seed=i)[0], ref))
        print(f"{beta:>6g} {np.median(ours):>12.2e}, {max(ours):.2e} {np.median(plain):>16.2e}, {max(plain):.2e} "
              f"{fallbacks:>9}/{args.batches}", flush=True)


if __name__ == "__main__":
    main()
