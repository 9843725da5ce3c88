"""Reading instruction-tuning datasets into one canonical table, and writing selections back."""

from thresher.data.readers import (
    CONTAINERS,
    FORMATS,
    TURNS,
    bundled_sharegpt_path,
    content_hash,
    detect_format,
    load,
    split_turns,
    write_records,
)
from thresher.data.table import Dataset, LoadReport

__all__ = [
    "CONTAINERS", "FORMATS", "TURNS", "Dataset", "LoadReport", "bundled_sharegpt_path",
    "content_hash", "detect_format", "load", "split_turns", "write_records",
]
