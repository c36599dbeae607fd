"""Where tasks run, seen from the coordinator: the backend interface and its shared
bookkeeping (``backend``), the built-in pool's dispatcher and lineage, and Dask."""
