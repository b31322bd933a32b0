"""Training and evaluation throughput at Beauty shape (12,101 items, L=50, d=64).

Prints, per backbone and batch size: ERM and IDEA (K=3, N=4, T=5) training sequences
per second, the IDEA/ERM per-step cost ratio, IDEA's seconds per step and the extra
cost of noise_ratio 0.1, and full-ranking evaluation users per second over 22,363 users. Uses the real Beauty leave-one-out events when the data is
found (--data-dir / $IDEA_DATA_DIR), else random sequences of Beauty's shape.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps 10] [--backbones gru4rec sasrec mamba4rec]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from idea.argparsing import StrictArgumentParser
from idea.config import BACKBONE_NAMES, TrainConfig
from idea.data import DataNotFoundError, load_split
from idea.splits import Events, Split, SplitConfig
from idea.trainer import Trainer

N_USERS, N_ITEMS, MAX_LEN = 22_363, 12_101, 50


def beauty_split(data_dir: str | None) -> tuple[Split, str]:
    try:
        return load_split("beauty", data_dir, SplitConfig("loo", MAX_LEN))[1], "real Beauty loo events"
    except DataNotFoundError:
        rng = np.random.default_rng(0)
        lengths = np.minimum(rng.geometric(1 / 9, 131_413), MAX_LEN)

        def events(n: int) -> Events:
            lens = lengths[:n]
            hist = np.where(np.arange(MAX_LEN) >= MAX_LEN - lens[:, None], rng.integers(1, N_ITEMS + 1, (n, MAX_LEN)), 0)
            return Events(hist, lens, rng.integers(1, N_ITEMS + 1, n), np.arange(n), np.arange(n), None, np.ones(n, bool))

        ev = events(N_USERS)
        split = Split("loo", "random", N_ITEMS, MAX_LEN, events(131_413), ev, {"test": ev}, {}, {}, np.ones(N_ITEMS + 1, bool), "")
        return split, "random sequences of Beauty's shape (Beauty files not found)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(trainer: Trainer, steps: int) -> float:
    """Mean wall time of one training step over `steps` batches (after 2 warm-up steps);
    IDEA steps cycle through the T schedule, so every T-th includes the extractor step."""
    order = trainer.permutation(1)
    batches = order.split(trainer.config.batch_size)
    phase = "idea" if trainer.config.method == "idea" else "erm"

    def run(i: int) -> None:
        trainer.train_step(phase, *trainer.batch(batches[i % len(batches)]))

    trainer.model.train()
    for i in range(2):
        run(i)
    sync(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        run(i + 2)
    sync(trainer.device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONE_NAMES), choices=BACKBONE_NAMES)
    args = p.parse_args()
    split, source = beauty_split(args.data_dir)
    print(f"input: {source}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'backbone':<9} {'batch':>5} {'ERM seq/s':>10} {'IDEA seq/s':>10} {'IDEA/ERM':>8} {'limit 1.25N':>11} "
          f"{'IDEA s/step':>11} {'noise 0.1':>9} {'eval users/s':>12}")
    for backbone in args.backbones:
        for batch in args.batches:
            cfg = dict(backbone=backbone, batch_size=batch, device=args.device)
            erm = Trainer(TrainConfig(**cfg), split)
            t_erm = seconds_per_step(erm, args.steps)
            idea = Trainer(TrainConfig(method="idea", K=3, N=4, T=5, **cfg), split)
            t_idea = seconds_per_step(idea, args.steps)
            noisy = Trainer(TrainConfig(method="idea", K=3, N=4, T=5, noise_ratio=0.1, **cfg), split)
            t_noisy = seconds_per_step(noisy, args.steps)
            ev = split.tests["test"]
            sync(erm.device)
            start = time.perf_counter()
            erm.evaluate_events(ev, "test")
            sync(erm.device)
            users = len(ev) / (time.perf_counter() - start)
            print(f"{backbone:<9} {batch:>5} {batch / t_erm:>10,.0f} {batch / t_idea:>10,.0f} {t_idea / t_erm:>8.2f} "
                  f"{1.25 * 4:>11.2f} {t_idea:>11.4f} {t_noisy / t_idea - 1:>+9.1%} {users:>12,.0f}", flush=True)
    print(f"device: {erm.device}" + (f" ({torch.cuda.get_device_name()})" if erm.device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
