"""Dataset and split statistics: how far each test window has drifted from training."""
from __future__ import annotations

import numpy as np

from idea.data.interactions import Interactions
from idea.splits import Split, to_date


def item_distribution(items: np.ndarray, n_items: int) -> np.ndarray:
    """[n_items + 1] empirical distribution of item ids (index 0, padding, stays 0)."""
    counts = np.bincount(items, minlength=n_items + 1).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint supports)."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def describe(data: Interactions, split: Split) -> dict:
    """Dataset totals plus, per part: events, users, cold-target share, JS divergence of the
    target-item distribution against training's, and the observed target time range."""
    lengths = np.diff(data.user_starts)
    train_dist = item_distribution(split.train.target, data.n_items)
    parts = []
    for name, ev in split.parts().items():
        lo, hi = split.bounds[name]
        parts.append({
            "name": name,
            "events": len(ev),
            "users": int(np.unique(ev.user).size),
            "skipped_no_history": split.skipped[name],
            "cold_share": float(1.0 - ev.warm.mean()) if len(ev) else float("nan"),
            "popularity_js_vs_train": js_divergence(item_distribution(ev.target, data.n_items), train_dist)
            if len(ev) else float("nan"),
            "start": to_date(ev.time.min()) if ev.time is not None and len(ev) else None,
            "end": to_date(ev.time.max()) if ev.time is not None and len(ev) else None,
            "window": [to_date(lo), to_date(hi)],
        })
    return {
        "dataset": data.name,
        "protocol": split.protocol,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": data.n_interactions,
        "sequence_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "time_range": [to_date(data.timestamp.min()), to_date(data.timestamp.max())] if data.has_time else None,
        "data_sha256": data.sha256,
        "max_len": split.max_len,
        "parts": parts,
    }


def format_description(desc: dict) -> str:
    """Human-readable table of `describe`'s output."""
    lines = [
        f"{desc['dataset']}: {desc['n_users']:,} users, {desc['n_items']:,} items, "
        f"{desc['n_interactions']:,} interactions; sequence length min {desc['sequence_length']['min']}, "
        f"mean {desc['sequence_length']['mean']:.2f}, max {desc['sequence_length']['max']}",
    ]
    if desc["time_range"]:
        lines.append(f"time range {desc['time_range'][0]} .. {desc['time_range'][1]}; protocol {desc['protocol']}")
    header = f"{'part':<6} {'events':>8} {'users':>7} {'skipped':>8} {'cold':>7} {'JS':>7}  window"
    lines += ["", header, "-" * len(header)]
    for p in desc["parts"]:
        lo, hi = p["window"]
        span = f"[{lo or '-inf'}, {hi or '+inf'})" if desc["protocol"] == "temporal" else "per-user position"
        lines.append(
            f"{p['name']:<6} {p['events']:>8,} {p['users']:>7,} {p['skipped_no_history']:>8,} "
            f"{p['cold_share']:>7.2%} {p['popularity_js_vs_train']:>7.4f}  {span}"
        )
    lines.append("\nskipped = targets with no earlier interaction of their user, which cannot be predicted (not in "
                 "events); cold = share of targets whose item never occurs in training; JS = Jensen-Shannon "
                 "divergence (bits) of target-item popularity vs training targets")
    return "\n".join(lines)
