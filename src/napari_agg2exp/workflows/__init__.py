"""The headless workflow layer: one case pipeline and the case folder, cohorts on Dask."""
