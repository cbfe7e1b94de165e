"""Pure DataFrame transformations and the table contracts (no I/O)."""
