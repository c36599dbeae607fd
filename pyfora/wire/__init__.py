"""The wire: what pyfora's processes say to each other, with no I/O.

Every end (the client in ``pyfora.aio``, the coordinator and the workers in ``cluster``)
speaks the protocol through this package and nothing else: its messages (``messages``),
their msgpack envelopes (``codec``), the frames of a message and its out-of-band buffers
(``framing``), what a session keeps to resume (``replay``), and how a connection opens
and an error crosses (``handshake``). User data travels in ``bytes`` fields and buffers
that only the client and the workers unpickle: the coordinator never does.

Imported as ``from pyfora import wire as p``: everything is re-exported here.

Runs on any thread; imports neither asyncio nor websockets (its only I/O: the files of
buffers in shared memory, through the ``pyfora.net.shared_memory.Directory`` it is given).
"""

from .codec import batch, decode, encode, message_size, oob_layout, value_size
from .framing import Assembler, to_frames
from .handshake import (
                        HELLO_HEADER,
                        endpoint_url,
                        error_for,
                        hello_from_header,
                        refusal,
                        refused,
                        upgrade_headers,
)
from .messages import (  # noqa: F401 - the operations, for tests and fuzzers
                        _FIELDS,
                        _OPS,
                        BATCH_BYTES,
                        CHUNK,
                        INLINE_LIMIT,
                        MAX_FRAME,
                        VERSION,
                        Ack,
                        Batch,
                        Cancel,
                        Define,
                        Done,
                        Error,
                        Fetch,
                        Free,
                        Get,
                        Hello,
                        Info,
                        Message,
                        Ok,
                        Output,
                        Piece,
                        Progress,
                        Release,
                        Run,
                        Split,
                        Stats,
                        Status,
                        Submit,
                        Value,
                        Welcome,
)
from .replay import Replay, RequestIds

__all__ = [
    "BATCH_BYTES", "CHUNK", "HELLO_HEADER", "INLINE_LIMIT", "MAX_FRAME", "VERSION", "Ack",
    "Assembler", "Batch", "Cancel", "Define", "Done", "Error", "Fetch", "Free", "Get",
    "Hello", "Info", "Message", "Ok", "Output", "Piece", "Progress", "Release", "Replay",
    "RequestIds", "Run", "Split", "Stats", "Status", "Submit", "Value", "Welcome", "batch",
    "decode", "encode", "endpoint_url", "error_for", "hello_from_header", "message_size",
    "oob_layout", "refusal", "refused", "to_frames", "upgrade_headers", "value_size",
]
