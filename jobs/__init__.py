"""Thin job entry points: parse arguments, load settings, build the session, run one function."""
