"""Model access: one backend layer shared by scoring, training and evaluation.

Backends are constructed cheaply and load weights in ``setup()``; import them from their modules
(``thresher.models.hf.HFCausalLM``, ``thresher.models.embedder.SentenceEmbedder``) so that torch
is imported only when a model is used.
"""
