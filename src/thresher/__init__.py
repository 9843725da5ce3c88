"""thresher: find the high-quality part of an instruction-tuning dataset.

Data flow (arrows point one way):  data -> scoring -> selection -> (training) -> evaluation,
with all model access through ``thresher.models``.
"""

__version__ = "0.1.0"
