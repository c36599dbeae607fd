"""The pyfora cluster: an aiohttp coordinator and its worker processes.

The coordinator never unpickles user payloads; only workers do. This package may import
``pyfora.protocol``, ``pyfora.serialization`` (workers only) and ``pyfora.errors``.
"""
