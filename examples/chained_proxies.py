"""Proxies chained through several steps: the data stays on the cluster throughout.

Each ``submit`` returns a Future of a ``RemotePythonObject`` (a proxy). Passing a proxy to
the next ``submit`` uses the value where it already is; only the final, small answer is
downloaded with ``toLocal()``.

    python examples/chained_proxies.py [CLUSTER_URL] [N]
"""

import sys

import pyfora


def make_records(n):
    """Step 1: a large list of records, built on the cluster."""
    return [{"id": i, "group": i % 7, "value": (i * 7919) % 1000} for i in range(n)]


def keep_large(records, threshold):
    """Step 2: a filter; its result is another remote value."""
    return [r for r in records if r["value"] >= threshold]


def totals_by_group(records):
    """Step 3: aggregate per group."""
    totals = {}
    for r in records:
        totals[r["group"]] = totals.get(r["group"], 0) + r["value"]
    return totals


def top(totals, k):
    """Step 4: the small answer worth downloading."""
    return sorted(totals.items(), key=lambda kv: -kv[1])[:k]


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    with pyfora.connect(url) as ufora:
        records = ufora.submit(make_records, n).result()
        large = ufora.submit(keep_large, records, 500).result()
        totals = ufora.submit(totals_by_group, large).result()
        answer = ufora.submit(top, totals, 3).result()
        for name, proxy in [("records", records), ("large", large), ("totals", totals)]:
            print(f"{name:8} stays remote: {proxy!r}")
        print("top groups:", answer.toLocal().result())

        # The same chain, as one with-block: the names it assigns come back as proxies.
        with ufora.remotely.remoteAll():
            groups = totals_by_group(keep_large(records, 900))
        print("with-block result:", groups)
        print("groups over 900:", len(groups.toLocal().result()))


if __name__ == "__main__":
    main()
