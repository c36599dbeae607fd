"""numpy on the cluster: build arrays remotely, work on them in parallel, download a
summary.

The arrays are made on the workers and never cross the network; numpy arrays that do
(``define``, ``toLocal``) travel as pickle protocol 5 out-of-band buffers, without extra
copies.

    python examples/numpy_data.py [CLUSTER_URL] [ROWS]
"""

import sys

import numpy as np

import pyfora


def make_chunk(seed, rows):
    """One chunk of a data set: rows of (x, y) with y = 3x + 2 plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-10, 10, rows)
    y = 3.0 * x + 2.0 + rng.normal(0, 1.0, rows)
    return np.column_stack([x, y])


def moments(chunk):
    """What a least-squares fit needs from a chunk: n, sums of x, y, xx, xy."""
    x, y = chunk[:, 0], chunk[:, 1]
    return np.array([len(x), x.sum(), y.sum(), (x * x).sum(), (x * y).sum()])


def fit(parts):
    n, sx, sy, sxx, sxy = np.sum(parts, axis=0)
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return slope, (sy - slope * sx) / n


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    with pyfora.connect(url) as ufora:
        chunks = [ufora.submit(make_chunk, seed, rows // 8) for seed in range(8)]
        chunks = [future.result() for future in chunks]        # proxies: data stays remote
        print(f"8 chunks of {chunks[0].typeName}, {chunks[0].size:,} bytes each, on the cluster")
        parts = [ufora.submit(moments, chunk) for chunk in chunks]   # in parallel
        parts = [future.result().toLocal().result() for future in parts]
        slope, intercept = fit(parts)
        print(f"fit: y = {slope:.3f} x + {intercept:.3f}")

        # A local array sent once, then used by name in a with-block.
        weights = ufora.define(np.linspace(0, 1, 8)).result()
        with ufora.remotely.downloadAll():
            means = [float(chunk[:, 1].mean()) for chunk in chunks]
            weighted = float(np.dot(weights, np.array(means)))
        print(f"weighted mean of y: {weighted:.3f}")


if __name__ == "__main__":
    main()
