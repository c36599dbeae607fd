"""TLS for ``wss://`` connections: the client's ``ssl.SSLContext``, and the one a
coordinator's own workers pin its certificate with.

Clients verify the cluster's certificate by default, against the system's trusted
authorities (and ``$SSL_CERT_FILE``, which OpenSSL reads). ``cafile=`` trusts a given
certificate or authority instead, a self-signed certificate included; ``verify=False``
turns verification off, for experiments only: the token then travels to whoever answers.

Runs on any thread; does no I/O but reading ``cafile``.
"""

from __future__ import annotations

import ssl

from ..errors import PyforaConnectionError


def client_context(cafile: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """The context a client (or a worker) connects to a ``wss://`` cluster with.

    Args:
        cafile: a PEM file of certificates to trust instead of the system's: the
            cluster's own certificate when it is self-signed, or the authority that
            signed it.
        verify: False accepts any certificate (no verification at all).

    Raises:
        PyforaConnectionError: ``cafile`` cannot be read or holds no certificate.
    """
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise PyforaConnectionError(f"cannot load cafile {cafile!r}: {exc}") from None
    # Lets a self-signed certificate in cafile be its own trust anchor; the default from
    # Python 3.13 on (https://github.com/python/cpython/issues/107361).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def pinned_context(certfile: str) -> ssl.SSLContext:
    """For the coordinator's own worker subprocesses: trust exactly the coordinator's
    certificate. They dial the address it bound (often 127.0.0.1 or 0.0.0.0), which need
    not be a name the certificate carries, so the host name is not checked; the pin and
    the token are what authenticate the coordinator."""
    context = ssl.create_default_context(cafile=certfile)
    context.check_hostname = False
    # A self-signed leaf is its own trust anchor only with PARTIAL_CHAIN (the default
    # from Python 3.13 on, not before).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
