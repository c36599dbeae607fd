"""What every process of pyfora uses to talk to the others, the client, the coordinator and
the workers alike: ordered sends in batches (``sender``), TLS contexts (``tls``), large
buffers through shared memory (``shared_memory``) and the tokens a local cluster leaves
for its user (``local_tokens``). The messages themselves are ``pyfora.wire``.
"""
