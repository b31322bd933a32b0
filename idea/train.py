"""`python -m idea.train`: train ERM, IDEA or DROS on one dataset and report per-window test metrics."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from idea.argparsing import StrictArgumentParser
from idea.config import BACKBONE_NAMES, LOSSES, METHODS, PAIRINGS, PENALTIES, TrainConfig
from idea.data import DATASETS, DataFormatError, DataNotFoundError, load_split
from idea.metrics import summary
from idea.splits import PROTOCOLS, SplitConfig
from idea.trainer import NonFiniteLossError, Trainer

# CLI flag -> TrainConfig field, for the flags whose names differ from the field (or need a type).
FLAGS = {
    "K": int, "N": int, "tau": float, "beta": float, "T": int, "lambda_low": float, "lambda_high": float,
    "alpha": float, "pretrain_epochs": int, "epochs": int, "patience": int, "lr": float, "batch_size": int,
    "dropout": float, "noise_ratio": float, "seed": int, "extractor_lr": float, "weight_decay": float,
    "dros_alpha": float, "dros_beta": float,
}


def _threads(text: str) -> int:
    """An argparse type: a thread count >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = StrictArgumentParser(prog="python -m idea.train", description=__doc__)
    p.add_argument("--dataset", default="synthetic", help=f"one of {sorted(DATASETS)} (default synthetic)")
    p.add_argument("--data-dir", help="data folder (default: $IDEA_DATA_DIR, else ./data)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="temporal")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--backbone", choices=BACKBONE_NAMES, default="gru4rec")
    p.add_argument("--method", choices=METHODS, default="erm")
    p.add_argument("--loss", choices=LOSSES, default="ce")
    p.add_argument("--pairing", choices=PAIRINGS, default=None)
    p.add_argument("--penalty", choices=PENALTIES, default=None, help="IDEA's penalty (default vrex)")
    p.add_argument("--no-mixup", action="store_true", help="IDEA ablation: environments are the K views")
    p.add_argument("--no-explore", action="store_true", help="IDEA ablation: extractors are never updated")
    p.add_argument("--mask-seen", action="store_true", help="exclude history items from the ranking")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<i>")
    p.add_argument("--threads", type=_threads, default=1,
                   help="torch CPU threads (default 1: torch's own default, one per core, made a run 5x slower on a "
                        "shared 2-core machine; raise it on cores of your own)")
    for name, typ in FLAGS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=typ, default=None, help=f"TrainConfig.{name} (default {getattr(TrainConfig, name)})")
    p.add_argument("--checkpoint", help="checkpoint file, rewritten every epoch; resumed from when it exists")
    p.add_argument("--init-from", help="warm start: a checkpoint (same backbone and split) whose best state initialises "
                                       "the backbone, with fresh optimisers (e.g. an ERM run's --checkpoint)")
    p.add_argument("--json", action="store_true",
                   help="stdout: only one JSON line with config and results (the table goes to stderr)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    values.update(backbone=args.backbone, method=args.method, loss=args.loss, device=args.device,
                  mixup=not args.no_mixup, explore=not args.no_explore, mask_seen=args.mask_seen,
                  init_from=args.init_from)
    if args.pairing:
        values["pairing"] = args.pairing
    if args.penalty:
        values["penalty"] = args.penalty
    return TrainConfig(**values)


def results_json(trainer: Trainer, frame) -> dict:
    """The CLI's JSON result: validation summary and per-window test metrics (all and warm)."""
    tests = {}
    for part in trainer.split.tests:
        tests[part] = {subset: summary(frame, part, subset) for subset in ("all", "warm")}
    return {
        "config": trainer.config.to_dict(),
        "dataset": trainer.split.dataset,
        "protocol": trainer.split.protocol,
        "data_sha256": trainer.split.data_sha256,
        "epochs_run": trainer.epoch,
        "best_epoch": trainer.best_epoch,
        "best_phase": trainer.best_phase,
        "fit_seconds": round(trainer.fit_seconds, 3),
        "valid": summary(frame, "valid", "all"),
        "test": tests,
    }


def format_table(frame) -> str:
    """Per-part table of HR/NDCG/MRR@10 for all and warm targets; the columns name metric and cut-off."""
    at10 = frame[frame.k == 10].pivot_table(index=["part", "subset"], columns="metric", values="value", sort=False)
    at10.columns = [f"{metric}@10" for metric in at10.columns]
    at10["events"] = frame[frame.k == 10].groupby(["part", "subset"], sort=False).n_events.first()
    return at10.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args)
        _, split = load_split(args.dataset, args.data_dir, SplitConfig(args.protocol, args.max_len))
        trainer = Trainer(config, split)  # CheckpointError (a ValueError) for a wrong --init-from
        if args.checkpoint and Path(args.checkpoint).exists():
            trainer.load(args.checkpoint)
            print(f"resumed from {args.checkpoint} at epoch {trainer.epoch}", file=sys.stderr)
    except (ValueError, DataNotFoundError, DataFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.init_from:
        print(f"warm start from the best state in {config.init_from}", file=sys.stderr)
    print(f"{args.dataset} ({args.protocol}): {len(split.train):,} training events, {len(split.valid):,} validation, "
          f"tests {', '.join(f'{k}={len(v):,}' for k, v in split.tests.items())}; {config.method} on {config.backbone}, "
          f"device {trainer.device}, torch threads {torch.get_num_threads()} (--threads)", file=sys.stderr)

    def on_epoch(r):
        extra = "".join(f" {k} {v:.4g}" for k, v in r.extra.items())
        print(f"epoch {r.epoch:3d} [{r.phase}] loss {r.train_loss:.4f}{extra} | valid ndcg@10 {r.valid['ndcg_at_10']:.4f} "
              f"hr@10 {r.valid['hr_at_10']:.4f} | best epoch {r.best_epoch or '-'} | {r.seconds:.1f}s", file=sys.stderr)

    try:
        trainer.fit(on_epoch, progress=sys.stderr.isatty(), checkpoint=args.checkpoint)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    frame = trainer.evaluate()
    print(format_table(frame), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results_json(trainer, frame)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
