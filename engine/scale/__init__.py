"""Batch work over many images on a backend: in this process or on a Dask cluster (results equal)."""
