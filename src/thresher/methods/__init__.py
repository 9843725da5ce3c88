"""Each paper's recipe as a short composition of scorers and selectors (see recipe.py)."""
