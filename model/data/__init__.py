"""Dataset adapters: each produces one canonical ``Dataset`` (events + item categories + id maps)."""

from model.data.dataset import Dataset, DatasetError, IdMap, Split
from model.data.registry import ADAPTERS, load_dataset

__all__ = ["ADAPTERS", "Dataset", "DatasetError", "IdMap", "Split", "load_dataset"]
