"""The coordinator process: its web app, the sessions and worker links it serves, the
checks at its doors, the object store, and the pool of worker processes it starts."""
