"""chatd.adapters.httpbody: a streamed body decoded from the socket's bytes, however
they are split, and refused when its framing is broken."""

from __future__ import annotations

import gzip
import zlib

import pytest

from chatd.adapters.httpbody import MAX_LINE, BadBody, BodyDecoder

CHUNKED = b"5\r\nHello\r\n7;ext=1\r\n, there\r\n0\r\nTrailer: x\r\n\r\n"


def feed_split(decoder: BodyDecoder, data: bytes, at: list[int]) -> bytes:
    out, last = [], 0
    for cut in [*at, len(data)]:
        out.append(decoder.feed(data[last:cut]))
        last = cut
    return b"".join(out)


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_chunked_body_split_anywhere_reads_the_same(cut):
    decoder = BodyDecoder(chunked=True, length=None)
    assert feed_split(decoder, CHUNKED, [cut]) == b"Hello, there"
    assert decoder.done


def test_chunked_body_fed_a_byte_at_a_time():
    decoder = BodyDecoder(chunked=True, length=None)
    assert feed_split(decoder, CHUNKED, list(range(1, len(CHUNKED)))) == b"Hello, there"
    assert decoder.done and decoder.at_eof()


def test_bytes_after_the_last_chunk_are_not_the_body():
    decoder = BodyDecoder(chunked=True, length=None)
    assert decoder.feed(b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n") == b"hi"
    assert decoder.done
    assert decoder.feed(b"more") == b""


def test_a_chunked_body_cut_short_is_not_whole():
    decoder = BodyDecoder(chunked=True, length=None)
    assert decoder.feed(b"5\r\nHel") == b"Hel"
    assert not decoder.done and not decoder.at_eof()


@pytest.mark.parametrize(
    "framing",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"+5\r\nhello\r\n",  # int() would take it
        b"1_0\r\n" + b"x" * 16 + b"\r\n",  # int() would take it too
        b"2\r\nhiX\r\n",  # the chunk runs past its size
        b"1" * 17 + b"\r\n",  # a size no body has
        b"5" + b";" * (MAX_LINE + 2),  # a size line that never ends
    ],
)
def test_broken_chunk_framing_is_refused(framing):
    decoder = BodyDecoder(chunked=True, length=None)
    with pytest.raises(BadBody):
        decoder.feed(framing)


def test_a_long_trailer_line_is_refused():
    decoder = BodyDecoder(chunked=True, length=None)
    decoder.feed(b"0\r\n")
    with pytest.raises(BadBody):
        decoder.feed(b"X-Long: " + b"a" * (MAX_LINE + 1))


def test_content_length_body_ends_at_its_length():
    decoder = BodyDecoder(chunked=False, length=5)
    assert decoder.feed(b"Hel") == b"Hel"
    assert not decoder.done
    assert decoder.feed(b"lo, junk") == b"lo"
    assert decoder.done


def test_a_close_delimited_body_is_whole_at_eof():
    decoder = BodyDecoder(chunked=False, length=None)
    assert decoder.feed(b"abc") == b"abc"
    assert not decoder.done
    assert decoder.at_eof() and decoder.done


def test_gzip_body_is_inflated_across_chunks():
    packed = gzip.compress(b'{"a":1}\n' * 100)
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i : i + 7]), packed[i : i + 7])
        for i in range(0, len(packed), 7)
    )
    decoder = BodyDecoder.for_headers({"transfer-encoding": "chunked", "content-encoding": "gzip"})
    out = feed_split(decoder, framed + b"0\r\n\r\n", list(range(3, len(framed), 11)))
    assert out == b'{"a":1}\n' * 100 and decoder.done


def test_deflate_body_is_inflated():
    decoder = BodyDecoder.for_headers({"content-encoding": "deflate"})
    assert decoder.feed(zlib.compress(b"hello")) == b"hello"


def test_broken_gzip_is_refused():
    decoder = BodyDecoder.for_headers({"content-encoding": "gzip"})
    with pytest.raises(BadBody):
        decoder.feed(b"not gzip at all")


def test_a_gzip_bomb_inflates_no_further_than_the_limit():
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB in about 64 KiB
    decoder = BodyDecoder.for_headers({"content-encoding": "gzip"}, limit=1 << 20)
    out = decoder.feed(bomb)
    assert len(out) == (1 << 20) + 1  # one past the limit: the reader then refuses it


@pytest.mark.parametrize(
    "headers",
    [
        {"content-encoding": "br"},
        {"content-encoding": "zstd"},
        {"transfer-encoding": "gzip, chunked"},
        {"content-length": "12, 12"},
        {"content-length": "-1"},
    ],
)
def test_bodies_it_cannot_read_are_left_to_urllib3(headers):
    assert BodyDecoder.for_headers(headers) is None


def test_header_names_and_values_are_matched_without_case():
    decoder = BodyDecoder.for_headers({"transfer-encoding": "Chunked", "content-encoding": "GZIP"})
    assert decoder is not None and decoder.chunked


def test_whole_chunks_one_per_read_are_taken_as_they_come():
    decoder = BodyDecoder(chunked=True, length=None)
    assert decoder.feed(b"5\r\nHello\r\n") == b"Hello"
    assert decoder.feed(b"3;x=y\r\n, t\r\n") == b", t"
    assert decoder.feed(b"0\r\n\r\n") == b"" and decoder.done and not decoder.extra


def test_a_whole_looking_chunk_that_does_not_end_in_crlf_is_refused():
    decoder = BodyDecoder(chunked=True, length=None)
    with pytest.raises(BadBody):
        decoder.feed(b"5\r\nHelloXY")  # as long as a whole chunk, but no CRLF at its end
        decoder.feed(b"\r\n")


def test_raw_deflate_without_its_zlib_header_is_inflated():
    pack = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = pack.compress(b"hello raw") + pack.flush()
    decoder = BodyDecoder.for_headers({"content-encoding": "deflate"})
    assert decoder.feed(raw[:3]) + decoder.feed(raw[3:]) == b"hello raw"


def test_every_member_of_a_multi_member_gzip_body_is_inflated():
    body = gzip.compress(b"member one|") + gzip.compress(b"member two")
    decoder = BodyDecoder.for_headers({"content-encoding": "gzip"})
    assert feed_split(decoder, body, [7, 30]) == b"member one|member two"
