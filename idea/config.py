"""The trainer's one configuration object: every field validated on construction."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

# idea.models.BACKBONES's keys, kept here so this module (and a study file's check) loads without torch;
# tests/idea/test_models.py keeps the two equal
BACKBONE_NAMES = ("gru4rec", "sasrec", "mamba4rec")
# Where and how fast: a checkpoint resumes under other values (precision changes rounding, not the model).
RUNTIME_FIELDS = ("device", "eval_batch_size", "precision", "buckets")
METHODS = ("erm", "idea", "dros")
PENALTIES = ("vrex", "irmv1")
LOSSES = ("ce", "bce")
PAIRINGS = ("same_user", "any")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # of training steps: idea/precision.py
BUCKETS = ("rows", "widths")  # how a backbone spares short rows the width of long ones: idea/models/base.py
PAIR_DRAWS = ("distinct", "with_replacement")
ALIGNS = ("right", "left")  # the extractors' position reading: idea/environments.py
ITEM_INITS = ("backbone", "normal")
SOFTMAX_ROWS = ("items", "all")
# The fields only one method reads; every other field is read by every method. A study rejects a
# method's field in another method's arm, and MLflow runs log only the fields their method reads.
METHOD_FIELDS = {
    "erm": (),
    "idea": ("K", "N", "tau", "beta", "T", "penalty", "lambda_low", "lambda_high", "alpha", "pairing", "mixup",
             "explore", "pretrain_epochs", "extractor_lr", "extractor_hidden", "extractor_input_grad", "pair_draw",
             "lambda_fold", "unbiased_var", "extractor_keep_logit", "extractor_align"),
    "dros": ("dros_alpha", "dros_beta"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow RecBole (Adam, lr 1e-3, batch 2048, patience 10) and the IDEA paper
    (K=3, N=4, tau=0.1, beta=1, T=5, lambda near 1). Ranges are checked in __post_init__."""

    backbone: str = "gru4rec"  # gru4rec | sasrec | mamba4rec
    method: str = "erm"  # erm | idea | dros
    loss: str = "ce"  # ce (full softmax) | bce (one sampled negative, the paper's Eq. 2)
    # IDEA
    K: int = 3  # extractors, 2..16
    N: int = 4  # environments, 2..32
    tau: float = 0.1  # relaxed-Bernoulli temperature, (0, 10]
    beta: float = 1.0  # penalty weight, [0, 1000]
    penalty: str = "vrex"  # vrex: variance of the environment risks | irmv1: mean squared IRMv1 gradient
    T: int = 5  # recommender steps per extractor step, 1..1000
    lambda_low: float = 0.9  # Uniform(lambda_low, lambda_high) mixup weight, 0.5 <= low <= high <= 1
    lambda_high: float = 1.0
    alpha: float | None = None  # if set, lambda ~ Beta(alpha, alpha) folded to >= 0.5 instead; (0, 100]
    pairing: str = "same_user"  # same_user | any
    mixup: bool = True  # False: environments are the K views themselves
    explore: bool = True  # False: extractors are never updated
    pretrain_epochs: int = 2  # ERM epochs before the IDEA phase, 0..epochs-1
    extractor_lr: float = 1e-3  # (0, 1]
    extractor_hidden: int = 64  # 1..4096
    # Options that reach the official code's behaviour ("official" below; docs/fidelity.md). Defaults are ours.
    extractor_input_grad: bool = False  # True: the extractors' input carries gradient into the item table (official)
    pair_draw: str = "distinct"  # distinct pairs across environments | with_replacement: each its own (official)
    lambda_fold: bool = True  # False (needs alpha, same_user): Beta's λ as drawn, either view dominates (official)
    unbiased_var: bool = False  # True: the penalty is torch.var's unbiased variance, N/(N-1) x ours (official)
    extractor_keep_logit: float | None = 2.0  # extractors' initial output bias, [-20, 20]; None: nn.Linear's (official)
    extractor_align: str = "right"  # extractor input j is the item L - j from the row's end | left: from its start (official)
    # DROS (Yang et al., SIGIR'23): base loss + dros_alpha * mean(L_DRO); the reference code's defaults
    dros_alpha: float = 0.0  # [0, 100]; 0 = plain ERM
    dros_beta: float = 1.0  # temperature beta' of L_DRO, (0, 1000]
    # training
    epochs: int = 200  # 1..10000
    patience: int = 10  # epochs without validation NDCG@10 gain before stopping, 1..10000
    lr: float = 1e-3  # (0, 1]
    batch_size: int = 2048  # 1..1_000_000
    dropout: float | None = None  # None = the backbone's default; [0, 1)
    weight_decay: float = 0.0  # [0, 1]
    noise_ratio: float = 0.0  # share of training positions replaced by fake items, [0, 1)
    fake_items: int | None = None  # fake rows, 0..1_000_000 (official: 1000); None: max(100, n_items // 10) with noise
    softmax_over: str = "items"  # CE over the real items 1..n | all: every row, padding and fake ones too (official)
    item_init: str = "backbone"  # the backbone's item-table init | normal: N(0, 1), nn.Embedding's (official)
    seed: int = 0  # >= 0
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    eval_batch_size: int | None = None  # None: 256 on CPU (fits the cache), 1024 on GPU; else 1..1_000_000
    precision: str = "auto"  # training steps: auto | fp32 | tf32 | bf16 (idea/precision.py); evaluation is float32
    buckets: str = "auto"  # auto (= rows) | rows: blocks of 256 length-ordered rows on a CPU, one pass on a GPU |
    # widths: length classes (GRU4Rec: packed sequences); the same users, other dropout draws (docs/speed.md)
    mask_seen: bool = False  # exclude history items from the ranking
    # the positive control's clean arm: every side item (promotion) in every history read as one id, in training
    # and evaluation, so the model cannot use which promotion it was (idea.splits.mask_side_items)
    mask_side_items: bool = False
    # warm start: path of a trainer checkpoint (same backbone and split) whose best state initialises
    # the backbone; optimisers start fresh (IDEA's Step 1 is a trained base recommender)
    init_from: str | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{field} = {getattr(self, field)!r} is invalid: allowed {allowed}")

        need(self.backbone in BACKBONE_NAMES, "backbone", str(BACKBONE_NAMES))
        need(self.method in METHODS, "method", str(METHODS))
        need(self.loss in LOSSES, "loss", str(LOSSES))
        need(self.pairing in PAIRINGS, "pairing", str(PAIRINGS))
        need(self.penalty in PENALTIES, "penalty", str(PENALTIES))
        need(self.precision in PRECISIONS, "precision", str(PRECISIONS))
        need(self.buckets in ("auto", *BUCKETS), "buckets", str(("auto", *BUCKETS)))
        need(self.pair_draw in PAIR_DRAWS, "pair_draw", str(PAIR_DRAWS))
        need(self.extractor_align in ALIGNS, "extractor_align", str(ALIGNS))
        need(self.item_init in ITEM_INITS, "item_init", str(ITEM_INITS))
        need(self.softmax_over in SOFTMAX_ROWS, "softmax_over", str(SOFTMAX_ROWS))
        need(self.softmax_over == "items" or self.loss == "ce", "softmax_over",
             "'items' with loss 'bce' (one sampled negative among the real items); 'all' needs loss 'ce'")
        for name in ("extractor_input_grad", "lambda_fold", "unbiased_var", "mask_side_items"):
            need(isinstance(getattr(self, name), bool), name, "True or False")
        need(self.lambda_fold or (self.alpha is not None and self.pairing == "same_user"), "lambda_fold",
             "True unless alpha is set and pairing is 'same_user' (Uniform λ >= 0.5 and pairing 'any' label "
             "each row with its dominant view)")
        need(self.extractor_keep_logit is None or (not isinstance(self.extractor_keep_logit, bool)
                                                   and -20 <= self.extractor_keep_logit <= 20),
             "extractor_keep_logit", "None or a number in [-20, 20]")
        need(self.fake_items is None or (isinstance(self.fake_items, int) and not isinstance(self.fake_items, bool)
                                         and 0 <= self.fake_items <= 1_000_000), "fake_items",
             "None or an integer in 0..1000000")
        need(self.fake_items != 0 or self.noise_ratio == 0, "fake_items",
             f"at least 1 with noise_ratio = {self.noise_ratio} (noise needs fake ids), or None")
        need(0 <= self.dros_alpha <= 100, "dros_alpha", "[0, 100]")
        need(0 < self.dros_beta <= 1000, "dros_beta", "(0, 1000]")
        for name, lo, hi in (("K", 2, 16), ("N", 2, 32), ("T", 1, 1000), ("epochs", 1, 10_000),
                             ("patience", 1, 10_000), ("batch_size", 1, 1_000_000),
                             ("extractor_hidden", 1, 4096)):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, name, f"an integer in {lo}..{hi}")
        need(self.eval_batch_size is None or (isinstance(self.eval_batch_size, int) and 1 <= self.eval_batch_size <= 1_000_000),
             "eval_batch_size", "None or an integer in 1..1000000")
        need(0 < self.tau <= 10, "tau", "(0, 10]")
        need(0 <= self.beta <= 1000, "beta", "[0, 1000]")
        need(0.5 <= self.lambda_low <= 1, "lambda_low", "[0.5, 1] (the dominant view's weight)")
        need(self.lambda_low <= self.lambda_high <= 1, "lambda_high", f"[lambda_low={self.lambda_low}, 1]")
        need(self.alpha is None or 0 < self.alpha <= 100, "alpha", "None or (0, 100]")
        need(0 < self.lr <= 1, "lr", "(0, 1]")
        need(0 < self.extractor_lr <= 1, "extractor_lr", "(0, 1]")
        need(self.dropout is None or 0 <= self.dropout < 1, "dropout", "None or [0, 1)")
        need(0 <= self.weight_decay <= 1, "weight_decay", "[0, 1]")
        need(0 <= self.noise_ratio < 1, "noise_ratio", "[0, 1)")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer >= 0")
        need(isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device",
             "'auto', 'cpu', 'cuda' or 'cuda:<index>'")
        need(self.init_from is None or (isinstance(self.init_from, str) and self.init_from != ""), "init_from",
             "None or the path of a trainer checkpoint")
        need(0 <= self.pretrain_epochs < self.epochs or self.method != "idea", "pretrain_epochs",
             f"0..epochs-1 = 0..{self.epochs - 1} (IDEA needs at least one epoch after pretraining)")

    def to_dict(self) -> dict:
        return asdict(self)

    def used(self) -> dict:
        """The fields this config's method reads (what a run of it should log)."""
        others = {f for m, names in METHOD_FIELDS.items() if m != self.method for f in names}
        return {k: v for k, v in asdict(self).items() if k not in others}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys by name (typos must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)
