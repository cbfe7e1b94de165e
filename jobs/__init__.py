"""Thin job entry points: parse arguments, load settings, build the session, run one function."""
__version__ = "0.2.0"
# The pipeline's stages, in the order data flows: `ipsynergy pipeline` runs them in one session.
STAGES = ("generate", "ingest", "refine", "aggregate", "personas", "train", "score")
