"""Running a scorer over a dataset: sharded, content-cached, resumable (``scoring.score_dataset``)."""
