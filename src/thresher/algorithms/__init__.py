"""Algorithm libraries of the papers, over numpy arrays: no models, no I/O, no scorer contract.

``knn`` (exact k-nearest neighbours, shared by rareness, DS2 and DEITA), ``ds2_curation`` (DS2's
SimiFeat rater-noise detection and transition-matrix estimation), ``opencs_tags`` (OpenCS's tag
parsing, normalisation and clustering). The scorers in ``thresher.scoring`` call them.
"""
