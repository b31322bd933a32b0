"""Datasets by name: where their files live, how to read them, and their default temporal cuts."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from idea.data import raw_amazon, readers
from idea.data.interactions import DataNotFoundError, Interactions, subsample_users
from idea.data.synthetic import SyntheticConfig, generate, promo_cuts
from idea.splits import Split, SplitConfig, make_split

AMAZON_CUTS = ("2013-07-24", "2013-10-24", "2014-01-24", "2014-04-24", "2014-07-24")
# Yelp: a 5-week validation window, then three 5-week test windows from t0 = 2019-09-01.
YELP_CUTS = ("2019-07-28", "2019-09-01", "2019-10-06", "2019-11-10", "2019-12-15")


@dataclass(frozen=True)
class Source:
    """One way a dataset can sit on disk: files relative to the data dir and a reader."""

    files: tuple[str, ...]
    read: Callable[..., Interactions]  # read(name, *absolute paths)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    sources: tuple[Source, ...]  # tried in order in each data dir
    obtain: str  # how a user gets the files
    cuts: tuple[str | int, ...] | None = None  # default temporal cuts (None: proportional)
    generator: SyntheticConfig | None = None  # generated in memory from this config instead of read from files


def _read_reviews(name: str, path: Path) -> Interactions:
    return raw_amazon.read_reviews_json(path, name)


def _amazon(name: str, stem: str, category: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        description=f"Amazon {category} 5-core (McAuley 2014), day-granular timestamps",
        sources=(
            Source((f"{name}/ticoserec/{stem}_item_org_rank.txt", f"{name}/ticoserec/{stem}_time_org_rank.txt"),
                   readers.read_item_time_lines),
            Source((f"{name}/reviews_{category}_5.json.gz",), _read_reviews),
        ),
        obtain=f"run `python -m idea.data download {name}` (McAuley's reviews_{category}_5.json.gz), "
        f"or copy TiCoSeRec's data/{stem.split('_')[0]}/{stem}_{{item,time}}_org_rank.txt into <data-dir>/{name}/ticoserec/",
        cuts=AMAZON_CUTS,
    )


def _toys() -> DatasetSpec:
    return DatasetSpec(
        name="toys",
        description="Amazon Toys_and_Games 5-core; the shipped ICLRec file has no timestamps (leave-one-out only)",
        sources=(
            Source(("toys/iclrec/Toys_and_Games.txt",), readers.read_item_lines),
            Source(("toys/reviews_Toys_and_Games_5.json.gz",), _read_reviews),
        ),
        obtain="run `python -m idea.data download toys`, or copy ICLRec's data/Toys_and_Games.txt into <data-dir>/toys/iclrec/",
        cuts=AMAZON_CUTS,
    )


# The positive control (idea/data/synthetic.py): promotions before 30% of the events, linked to the next
# item's topic with these probabilities (percent in the name), the link turned to another topic at the first
# test day; otherwise the default synthetic data (2,000 users).
PROMO_STRENGTHS = (0.0, 0.5, 1.0)


def _promo(strength: float) -> DatasetSpec:
    config = SyntheticConfig(promo_rate=0.3, promo_link=strength)
    return DatasetSpec(
        name=f"synthetic-promo{round(100 * strength)}",
        description=f"synthetic with promotions linked to the next topic with probability {strength:g} before "
        "the first test day and to another topic from it (the positive control; no files)",
        sources=(),
        obtain="nothing to obtain: generated in memory",
        cuts=promo_cuts(config),
        generator=config,
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _amazon("beauty", "Beauty", "Beauty"),
        _amazon("sports", "Sports", "Sports_and_Outdoors"),
        _toys(),
        DatasetSpec(
            name="yelp",
            description="Yelp 2019 reviews 5-core (TiCoSeRec Yelp-A = ICLRec's Yelp), second-granular timestamps",
            sources=(Source(("yelp/ticoserec/Yelp-A/Yelp_item_org_rank.txt", "yelp/ticoserec/Yelp-A/Yelp_time_org_rank.txt"),
                            readers.read_item_time_lines),),
            obtain="copy TiCoSeRec's data/Yelp-A/Yelp_{item,time}_org_rank.txt into <data-dir>/yelp/ticoserec/Yelp-A/",
            cuts=YELP_CUTS,
        ),
        DatasetSpec(
            name="ml-100k",
            description="MovieLens-100K (RecBole atomic file), second-granular timestamps",
            sources=(Source(("ml-100k/recbole/ml-100k.inter",), readers.read_recbole_inter),),
            obtain="`pip download --no-deps recbole==1.2.1` and unzip recbole/dataset_example/ml-100k/ml-100k.inter "
            "into <data-dir>/ml-100k/recbole/",
        ),
        DatasetSpec(
            name="synthetic",
            description="generated in memory from a seed with a controlled temporal shift (no files)",
            sources=(),
            obtain="nothing to obtain: generated in memory",
            generator=SyntheticConfig(),
        ),
        *(_promo(strength) for strength in PROMO_STRENGTHS),
    )
}


def data_dir_of(data_dir: str | os.PathLike | None = None) -> Path:
    """Where the files are: --data-dir if given, else $IDEA_DATA_DIR if set, else ./data. Only the
    first of these that is set: a path someone typed is used or fails, never silently replaced."""
    chosen = next(d for d in (data_dir, os.environ.get("IDEA_DATA_DIR"), "data") if d)
    return Path(chosen).expanduser().absolute()


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Interactions:
    """Load a dataset by name from the first data dir holding one of its sources (or generate it)."""
    spec = get_spec(name)
    if spec.generator is not None:
        return generate(spec.generator, name)
    tried, root = [], data_dir_of(data_dir)
    for source in spec.sources:
        paths = [root / f for f in source.files]
        if all(p.is_file() for p in paths):
            return source.read(name, *paths)
        tried.extend(str(p) for p in paths)
    expected = "\n".join(f"  - {' + '.join(s.files)}" for s in spec.sources)
    raise DataNotFoundError(
        f"dataset {name!r} not found. Paths tried:\n  " + "\n  ".join(tried)
        + f"\nExpected (relative to the data dir), one of:\n{expected}\n"
        f"Set the data dir with --data-dir (else $IDEA_DATA_DIR, else ./data). To obtain it: {spec.obtain}"
    )


def load_split(name: str, data_dir: str | os.PathLike | None = None, config: SplitConfig = SplitConfig(),
               max_users: int | None = None, seed: int = 0) -> tuple[Interactions, Split]:
    """A dataset by name (a random sample of `max_users` users, drawn with `seed`, when given) and its
    split by `config`, with the dataset's default temporal cuts unless `config` sets its own. The one
    way the CLIs, the studies and the benchmarks build a split."""
    data = load_dataset(name, data_dir)
    if max_users is not None:
        data = subsample_users(data, max_users, seed)
    return data, make_split(data, config, get_spec(name).cuts)
