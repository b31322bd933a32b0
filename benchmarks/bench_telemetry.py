"""What IDEA's mechanism telemetry costs a training step, at Beauty shape (bench_train.py's data).

Three variants of the same IDEA step (GRU4Rec, K=3, N=4, T=5) on the same batches, interleaved round by
round so a busy machine slows all three alike, each round's time per step kept and the minimum over rounds
reported (the least disturbed): without telemetry (`view_telemetry` replaced by nothing), with the views'
statistics only (every step pays them), and with the penalty share measured too (one more backward pass,
which training pays on every SHARE_EVERY-th step). The overhead of training as it runs is the views'
cost plus the measured step's extra over SHARE_EVERY.

    OMP_NUM_THREADS=1 python benchmarks/bench_telemetry.py --data-dir path/to/data [--batch 1024] [--rounds 5]
"""
from __future__ import annotations

import time

import torch
from bench_train import beauty_split  # benchmarks/ is on the path when run as a script

import idea.methods as methods
from idea.argparsing import StrictArgumentParser
from idea.config import TrainConfig
from idea.trainer import Trainer


def step_seconds(trainer: Trainer, batches: list, measure: bool) -> float:
    """Mean seconds of one IDEA step over `batches` (an exploring step every T-th, as in training)."""
    start = time.perf_counter()
    for i, (idx, width) in enumerate(batches):
        history, lengths, target = trainer.batch(idx, width)
        trainer.objective.idea_step(trainer.step_context(), history, lengths, target, explore=(i + 1) % trainer.config.T == 0,
                                    measure_share=measure)
    return (time.perf_counter() - start) / len(batches)


def main(argv: list[str] | None = None) -> None:
    p = StrictArgumentParser(prog="python benchmarks/bench_telemetry.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10, help="steps per variant and round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    split, source = beauty_split(args.data_dir)
    trainer = Trainer(TrainConfig(method="idea", batch_size=args.batch, device="cpu", pretrain_epochs=0), split)
    batches = trainer.epoch_batches(1)[: args.steps]
    with_views = methods.view_telemetry
    best = {"none": float("inf"), "views": float("inf"), "views+share": float("inf")}
    for _ in range(args.rounds):
        methods.view_telemetry = lambda masks, lengths, lam: {}  # noqa: E731  the step without statistics
        best["none"] = min(best["none"], step_seconds(trainer, batches, measure=False))
        methods.view_telemetry = with_views
        best["views"] = min(best["views"], step_seconds(trainer, batches, measure=False))
        best["views+share"] = min(best["views+share"], step_seconds(trainer, batches, measure=True))
    every = methods.IDEA.SHARE_EVERY
    overhead = (best["views"] - best["none"] + (best["views+share"] - best["views"]) / every) / best["none"]
    print(f"IDEA step at batch {args.batch} on {source}, one thread, min over {args.rounds} rounds of {args.steps} steps:")
    for name, seconds in best.items():
        print(f"  {name:12s} {1000 * seconds:8.1f} ms")
    print(f"training's overhead (views every step, the share every {every}th): {100 * overhead:+.1f}%")


if __name__ == "__main__":
    main()
