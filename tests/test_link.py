"""The front-end ↔ engine wire format (service/link.py): every array it carries comes back with its dtype, shape
and values, through a real asyncio stream."""

import asyncio

import numpy as np

from curvedit.service import link

ARRAYS = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.array(7.5, dtype=np.float64),  # 0-d: one element, no shape
    link.NONE,  # an absent optional array: (0,) float32
    np.zeros((0, 8), np.float32),  # no rows, but a width
    np.array([[1, 2], [3, 255]], np.uint8),
    np.array([-1, 2**40], np.int64),
]


def test_a_message_round_trips_through_a_stream():
    async def main():
        reader = asyncio.StreamReader()
        for part in link.encode(link.RESULT, 2**40 + 3, "naïve\x1f0\x1fmessage", ARRAYS):
            reader.feed_data(bytes(part))
        reader.feed_eof()
        return await link.read(reader)

    message = asyncio.run(main())
    assert (message.kind, message.id, message.text) == (link.RESULT, 2**40 + 3, "naïve\x1f0\x1fmessage")
    assert len(message.arrays) == len(ARRAYS)
    for got, sent in zip(message.arrays, ARRAYS, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)


def test_a_non_contiguous_array_is_sent_as_its_values():
    sent = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    body = memoryview(b"".join(bytes(p) for p in link.encode(link.RESULT, 1, "", [sent]))[13:])
    (got,) = link.decode(link.RESULT, 1, body).arrays
    np.testing.assert_array_equal(got, sent)
