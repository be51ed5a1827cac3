"""Data: the volume type and NIfTI I/O, model-grid geometry, label vocabularies, the synthetic phantom."""
