"""Code that runs inside worker processes: a built-in worker's main loop, its task thread,
its parallel context and stats, and the tasks Dask workers run for pyfora."""
