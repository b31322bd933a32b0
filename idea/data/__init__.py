"""Datasets: a registry by name producing one canonical interaction table."""
from idea.data.interactions import DataFormatError, DataNotFoundError, Interactions
from idea.data.registry import DATASETS, data_dir_of, get_spec, load_dataset, load_split

__all__ = ["DATASETS", "DataFormatError", "DataNotFoundError", "Interactions", "data_dir_of", "get_spec", "load_dataset", "load_split"]
