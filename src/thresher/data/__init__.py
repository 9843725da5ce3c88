"""Reading instruction-tuning datasets into one canonical table, and writing selections back."""

from thresher.data.readers import CONTAINERS, bundled_sharegpt_path, load, write_records
from thresher.data.records import FORMATS, TURNS, content_hash, detect_format, split_turns
from thresher.data.table import Dataset, LoadReport

__all__ = [
    "CONTAINERS", "FORMATS", "TURNS", "Dataset", "LoadReport", "bundled_sharegpt_path",
    "content_hash", "detect_format", "load", "split_turns", "write_records",
]
