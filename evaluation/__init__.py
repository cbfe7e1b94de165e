"""Evaluation against generated data: the generator, its planted truth, and how well the
pipeline recovers it. Production jobs never import this package; `ipsynergy generate` and
`ipsynergy evaluate` do."""
