"""How large IDEA's invariance penalty is on a trained recommender, to size the β search range.

On Beauty (temporal split, GRU4Rec, default IDEA settings K=3, N=4, τ=0.1, λ ~ U(0.9, 1)), starting
from an ERM-trained backbone (trained here and saved to --model, or loaded from it):

1. E[var(R)] and E[mean(R)] of the environment risks over random training batches of each --batch
   size (no update): with distinct environments var(R) carries the environments' differences; with
   environments that are all the same mixture it would be sampling noise that shrinks like 1/B.
2. With --epoch: one IDEA training epoch (β = --beta, exploration every T steps); at every step the
   gradient norms ||∇θ mean(R)|| and ||∇θ var(R)|| on that step's environments, and the β at which
   the penalty's gradient matches the mean's (β* = ||∇ mean|| / ||∇ var||).

    python benchmarks/penalty_scale.py --data-dir path/to/data --model outputs/bench/beauty-erm.pt [--epoch]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from idea.argparsing import StrictArgumentParser
from idea.config import TrainConfig
from idea.data import load_split
from idea.environments import vrex
from idea.trainer import Trainer


def erm_model(split, path: Path, epochs: int) -> dict:
    """The ERM backbone's best state: loaded from `path`, or trained (early stopping) and saved there."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    trainer = Trainer(TrainConfig(epochs=epochs, patience=5, device="cpu"), split)
    trainer.fit(lambda r: print(f"  erm epoch {r.epoch}: valid ndcg@10 {r.valid['ndcg_at_10']:.4f}", flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.best_state, path)
    return trainer.best_state


def risk_moments(trainer: Trainer, batch: int, draws: int, seed: int) -> tuple[float, float, float]:
    """Mean over `draws` random batches of var(R) (with its standard error) and of mean(R)."""
    g = torch.Generator().manual_seed(seed)
    variances, means = [], []
    trainer.model.train()
    with torch.no_grad():
        for _ in range(draws):
            idx = torch.randperm(len(trainer.train_target), generator=g)[:batch]
            risks = trainer.objective.idea_forward(trainer.step_context(), *trainer.batch(idx))[0]
            mean, var = vrex(risks)
            variances.append(float(var))
            means.append(float(mean))
    v = np.asarray(variances)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))), float(np.mean(means))


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def epoch_scales(trainer: Trainer) -> dict[str, np.ndarray]:
    """Per step of one IDEA epoch: mean(R), var(R) and the gradient norms of both on that step's batch."""
    rows = {"mean": [], "var": [], "grad_mean": [], "grad_var": []}
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.train()
    for idx in trainer.permutation(1).split(trainer.config.batch_size):
        batch = trainer.batch(idx)
        state = torch.get_rng_state()
        mean, var = vrex(trainer.objective.idea_forward(trainer.step_context(), *batch)[0])
        rows["mean"].append(float(mean.detach()))
        rows["var"].append(float(var.detach()))
        rows["grad_mean"].append(grad_norm(mean, params))
        rows["grad_var"].append(grad_norm(var, params))
        torch.set_rng_state(state)  # the training step sees the draws just measured
        trainer.objective.steps += 1
        trainer.train_step("idea", *batch)
    return {k: np.asarray(v) for k, v in rows.items()}


def main() -> None:
    p = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--model", type=Path, default=Path("outputs/bench/beauty-erm.pt"))
    p.add_argument("--erm-epochs", type=int, default=40)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 2048])
    p.add_argument("--draws", type=int, default=200, help="random batches per batch size")
    p.add_argument("--keep-logits", type=float, nargs="+",
                   help="set extractor k's output bias to the k-th value (e.g. 2 0 -2: extractors keeping about 88%%, "
                        "50%% and 12%% of a sequence) instead of the fresh init, where all extractors keep about 88%%")
    p.add_argument("--epoch", action="store_true", help="also measure the gradient scales over one IDEA epoch")
    p.add_argument("--beta", type=float, default=1.0, help="β of that epoch")
    args = p.parse_args()
    torch.set_num_threads(2)
    _, split = load_split("beauty", args.data_dir)
    state = erm_model(split, args.model, args.erm_epochs)
    extractors = f"keep logits {args.keep_logits}" if args.keep_logits else "fresh extractors"
    print(f"beauty temporal: {len(split.train):,} training events; ERM backbone from {args.model}; {extractors}")
    for batch in args.batches:
        trainer = Trainer(TrainConfig(method="idea", pretrain_epochs=0, device="cpu"), split)
        trainer.model.load_state_dict(state)
        if args.keep_logits:
            with torch.no_grad():
                b2 = trainer.objective.extractors.b2  # [K, L] output biases
                b2.copy_(torch.tensor(args.keep_logits).unsqueeze(1).expand_as(b2))
        start = time.perf_counter()
        var, sem, mean = risk_moments(trainer, batch, args.draws, seed=batch)
        print(f"B={batch:>5}: E[var(R)] = {var:.3e} ± {sem:.1e} (s.e.), E[mean(R)] = {mean:.4f} "
              f"over {args.draws} batches ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.epoch:
        trainer = Trainer(TrainConfig(method="idea", pretrain_epochs=0, beta=args.beta, device="cpu"), split)
        trainer.model.load_state_dict(state)
        s = epoch_scales(trainer)
        ratio = s["grad_mean"] / s["grad_var"]
        print(f"one IDEA epoch (β={args.beta:g}, {len(ratio)} steps, B={trainer.config.batch_size}), median [10%, 90%]:")
        for name, v in (("mean(R)", s["mean"]), ("var(R)", s["var"]), ("||∇θ mean(R)||", s["grad_mean"]),
                        ("||∇θ var(R)||", s["grad_var"]), ("β* = ||∇mean||/||∇var||", ratio)):
            lo, mid, hi = np.quantile(v, [0.1, 0.5, 0.9])
            print(f"  {name:<24} {mid:.3e} [{lo:.3e}, {hi:.3e}]")


if __name__ == "__main__":
    main()
