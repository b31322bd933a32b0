"""Accuracy and epoch time against RecBole 1.2.1's protocol on Beauty leave-one-out.

Same files, same protocol: leave-one-out in time order (131,413 training events),
full ranking, CE loss, max length 50, batch 2048, lr 1e-3, early stopping on
validation NDCG@10 with patience 10. Prints per run: epochs, best epoch, mean
training seconds per epoch, and test NDCG@10 / HR@10 of the best state.

    python benchmarks/bench_accuracy.py --data-dir path/to/data [--backbones gru4rec sasrec] [--seeds 0 1] [--device cuda]

With --checkpoint-dir each run rewrites <dir>/<backbone>-seed<seed>.pt every epoch and a rerun continues
it from there (a long CPU run can be stopped and resumed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from idea.argparsing import StrictArgumentParser
from idea.config import TrainConfig
from idea.data import load_split
from idea.metrics import summary
from idea.splits import SplitConfig
from idea.trainer import Trainer


def main() -> None:
    p = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--data-dir")
    p.add_argument("--backbones", nargs="+", default=["gru4rec", "sasrec"])
    p.add_argument("--method", default="erm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="training steps: auto | fp32 | tf32 | bf16 (idea/precision.py)")
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--checkpoint-dir", type=Path, help="resumable per-run checkpoints (see above)")
    args = p.parse_args()
    _, split = load_split(args.dataset, args.data_dir, SplitConfig("loo", 50))
    print(f"{args.dataset} loo: {len(split.train):,} training events", file=sys.stderr)
    rows = []
    for backbone in args.backbones:
        for seed in args.seeds:
            cfg = TrainConfig(backbone=backbone, method=args.method, seed=seed, device=args.device,
                              epochs=args.max_epochs, patience=10, lr=1e-3, batch_size=2048, loss="ce",
                              precision=args.precision)
            trainer = Trainer(cfg, split)
            checkpoint = args.checkpoint_dir / f"{backbone}-seed{seed}.pt" if args.checkpoint_dir else None
            if checkpoint is not None and checkpoint.is_file():
                trainer.load(checkpoint)
                print(f"  {backbone} seed {seed}: resumed after epoch {trainer.epoch}", file=sys.stderr)
            trainer.fit(lambda r: print(f"  {backbone} seed {seed} epoch {r.epoch} valid ndcg@10 "
                                        f"{r.valid['ndcg_at_10']:.4f} train {r.train_seconds:.2f}s", file=sys.stderr,
                                        flush=True), checkpoint=checkpoint)
            test = summary(trainer.evaluate(["test"]), "test")
            train_s = np.mean([r.train_seconds for r in trainer.records])
            epoch_s = np.mean([r.seconds for r in trainer.records])
            row = {"backbone": backbone, "method": args.method, "precision": trainer.precision, "seed": seed, "epochs": trainer.epoch,
                   "best_epoch": trainer.best_epoch, "train_s_per_epoch": round(float(train_s), 3),
                   "epoch_s_with_valid": round(float(epoch_s), 3), "test_ndcg_at_10": round(test["ndcg_at_10"], 4),
                   "test_hr_at_10": round(test["hr_at_10"], 4), "device": str(trainer.device)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'backbone':<9} {'prec':>4} {'seed':>4} {'epochs':>6} {'best':>4} {'train s/ep':>10} {'NDCG@10':>8} {'HR@10':>7}")
    for r in rows:
        print(f"{r['backbone']:<9} {r['precision']:>4} {r['seed']:>4} {r['epochs']:>6} {r['best_epoch']:>4} {r['train_s_per_epoch']:>10.2f} "
              f"{r['test_ndcg_at_10']:>8.4f} {r['test_hr_at_10']:>7.4f}")


if __name__ == "__main__":
    main()
