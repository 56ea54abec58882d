"""The link between a front-end process and the engine process of ``serve --workers N``: framed messages of
raw array bytes over a Unix domain socket, nothing pickled.

Why a Unix socket, not shared-memory rings or ZeroMQ: a request's payload here is small (an edit of 64 latents of
d = 8 is 2 KiB; a batch of 32×32 images 3 KiB an image), so what a message costs is its system calls, not its copy;
a socket gives the wake-up (asyncio waits on it like on any connection), back-pressure (the kernel's buffer) and
fault detection (a peer killed with -9 is an EOF at once, so its in-flight work is failed, never left hanging)
for free, where rings would need a second channel for each of the three. And it needs nothing beyond the
standard library (pyzmq is neither a dependency nor on the GPU image). Messages are not sent one system call
each: ``Link.send`` queues them and one ``writelines`` per event-loop turn flushes all that turn produced, so a
busy front end sends dozens of requests per call. Arrays travel as their bytes (``numpy.frombuffer`` on the
other side: no copy beyond the socket's own) after a header of dtype and shape.

A message: ``length`` (u32, the bytes after it), ``kind`` (u8), ``id`` (u64), a UTF-8 ``text`` (u32 length; a
batch key, a JSON object, an error message), then ``n`` arrays, each ``dtype`` (one byte), ``ndim`` (u8), its
shape (u32 each) and its bytes.
"""

from __future__ import annotations

import asyncio
import math
import struct

import numpy as np

# Front end → engine
SUBMIT = 1  # text: "model\x1feditor\x1fkind\x1fdeadline\x1fseeds-are-input"; arrays: x, [amounts], [seeds]
CANCEL = 2  # the client is gone: drop the work if it has not started
CALL = 3  # text: JSON {"call": name, ...}; arrays: its inputs (translate: z)
# Engine → front end
RESULT = 10  # text: "" (ok) or "code\x1fpushback_ms\x1fmessage"; arrays: the rows; then queue wait, stats
REPLY = 11  # text: JSON (or "code\x1f0\x1fmessage" for an error, with kind ERROR_REPLY)
ERROR_REPLY = 12
CATALOG = 13  # text: JSON of the engine's models and what they are (catalog.to_catalog)

SEP = "\x1f"
_HEAD = struct.Struct("<IBQI")  # length, kind, id, text length
_ARRAY = struct.Struct("<cB")  # dtype code, ndim
_DTYPES = {b"f": np.float32, b"B": np.uint8, b"q": np.int64, b"d": np.float64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
NONE = np.zeros((0,), np.float32)  # an absent optional array (amounts of a Generate, seeds unset)


class Message:
    __slots__ = ("arrays", "id", "kind", "text")

    def __init__(self, kind: int, id: int, text: str, arrays: list[np.ndarray]):
        self.kind, self.id, self.text, self.arrays = kind, id, text, arrays


def encode(kind: int, id: int, text: str = "", arrays=()) -> list:
    """The buffers of one message (header, text, each array's header and bytes), ready for ``writelines``."""
    raw = text.encode()
    parts, size = [b"", raw], _HEAD.size - 4 + len(raw)
    for array in arrays:
        array = np.require(array, requirements="C")  # as ascontiguousarray, but a 0-d array stays 0-d
        head = _ARRAY.pack(_CODES[array.dtype], array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        data = memoryview(array).cast("B") if array.size else b""
        parts += [head, data]
        size += len(head) + array.nbytes
    parts[0] = _HEAD.pack(size, kind, id, len(raw))
    return parts


def decode(kind: int, id: int, body: memoryview) -> Message:
    """A message from its body (everything after the header's length, kind and id)."""
    (text_len,) = struct.unpack_from("<I", body, 0)
    offset = 4 + text_len
    text = bytes(body[4:offset]).decode()
    arrays = []
    while offset < len(body):
        code, ndim = _ARRAY.unpack_from(body, offset)
        offset += _ARRAY.size
        shape = struct.unpack_from(f"<{ndim}I", body, offset)
        offset += 4 * ndim
        dtype = np.dtype(_DTYPES[code])
        count = math.prod(shape)  # math's, not numpy's: np.prod of a tuple costs ~4 µs, per array
        arrays.append(np.frombuffer(body, dtype, count, offset).reshape(shape))
        offset += count * dtype.itemsize
    return Message(kind, id, text, arrays)


async def read(reader: asyncio.StreamReader) -> Message:
    """The next message (``asyncio.IncompleteReadError`` at the peer's EOF)."""
    head = await reader.readexactly(_HEAD.size - 4)  # length, kind, id
    length, kind, id = struct.unpack("<IBQ", head)
    body = await reader.readexactly(length - (_HEAD.size - 4) + 4)
    return decode(kind, id, memoryview(body))


class Link:
    """One end of a connection: ``send`` queues a message, and each event-loop turn flushes what it queued."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._pending: list = []
        self._flushing = False
        self.closed = False

    def send(self, kind: int, id: int, text: str = "", arrays=()) -> None:
        if self.closed:
            return
        self._pending += encode(kind, id, text, arrays)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        pending, self._pending = self._pending, []
        if pending and not self.closed:
            try:
                self.writer.writelines(pending)
            except (ConnectionError, RuntimeError):  # the peer is gone: the reader sees its EOF
                self.closed = True

    async def drain(self) -> None:
        """Wait until the kernel took what was sent (back-pressure for a producer that sends a lot)."""
        if not self.closed:
            try:
                await self.writer.drain()
            except ConnectionError:
                self.closed = True

    async def read(self) -> Message:
        return await read(self.reader)

    def close(self) -> None:
        self.closed = True
        self.writer.close()
