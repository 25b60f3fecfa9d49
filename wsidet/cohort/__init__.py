"""Many slides into one output folder: the run, resuming, and the dask cluster."""
