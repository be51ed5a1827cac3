"""The ``agg2exp`` command line: one module per command group (parse, call a workflow, print)."""
