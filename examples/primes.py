"""The pyfora tutorial ("Running Python Code"), in Python 3.

Run it on an embedded cluster (one worker per core):  python examples/primes.py
or on a running one:                                  python examples/primes.py http://localhost:8000/
An optional second argument sets N (default 1,000,000; the tutorial uses 10,000,000).
"""

import sys

import pyfora

url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000 * 1000

ufora = pyfora.connect(url)


def isPrime(p):
    x = 2
    while x*x <= p:
        if p%x == 0:
            return 0
        x = x + 1
    return 1


# Calculating on the cluster
with ufora.remotely.downloadAll():
    result = sum(isPrime(x) for x in range(N))

print(result)

# Working with proxies
with ufora.remotely.remoteAll():
    primes = [x for x in range(N) if isPrime(x)]

print(primes)                       # a proxy: the list stays on the cluster

with ufora.remotely.downloadAll():
    lastFewPrimes = primes[-100:]

print(lastFewPrimes)

local_primes = primes.toLocal().result()
print(len(local_primes), local_primes[-3:])

# Small values come back, large ones stay remote
with ufora.remotely.downloadSmall(bytecount=100*1024):
    count = len(primes)
    everyOther = primes[::2]

print(count, everyOther)

ufora.close()
