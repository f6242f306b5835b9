"""chatd.adapters.httpbody ~~~ A streamed answer's body, decoded from its socket's bytes.

Once a stream's head is in, chatd reads its body straight from the socket
rather than through urllib3, whose reads block: the relay (:mod:`chatd.relay`)
reads every open stream of a worker on one thread, waiting on many sockets at
once. This is the little of HTTP/1.1 that needs (RFC 9112 sections 6 and 7):
chunked, Content-Length or close-delimited framing, and the gzip and deflate
content codings requests asks for. A body in any other coding is read by
urllib3 as before (:meth:`BodyDecoder.for_headers` returns None).
"""

from __future__ import annotations

import re
import zlib

# A chunk-size line (size, extensions) or a trailer line longer than this is
# not HTTP any client would send: refuse it rather than buffer it.
MAX_LINE = 4096
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
# States of the chunked framing.
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class BadBody(Exception):
    """The body's framing is broken (a chunk size that is not hex, say)."""


class BodyDecoder:
    """Feed it the socket's bytes in any pieces; it returns the body's content.

    ``done`` turns true once the body's own end was read (the last chunk and
    its trailers, or Content-Length bytes). At the connection's end
    :meth:`at_eof` says whether that end was a proper one.
    """

    def __init__(self, chunked: bool, length: int | None, coding: str = "", limit: int = 1 << 62):
        self.chunked = chunked
        #: Bytes came after the body's end: the connection cannot be used again.
        self.extra = False
        # Inflated content stops one byte past ``limit``: a small gzip body may
        # inflate a thousandfold, and the reader refuses it past its limit anyway.
        self._room = limit + 1
        self.done = False
        self._left = length  # of the whole body (Content-Length) or the current chunk
        self._state = _SIZE
        self._buffer = bytearray()
        self._inflate = None
        self._inflated = False  # any output yet: before it, raw deflate is still possible
        if coding in ("gzip", "x-gzip", "deflate"):
            # wbits 32 + 15: a gzip or zlib header, whichever comes.
            self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
        if not chunked and length == 0:
            self.done = True

    @classmethod
    def for_headers(cls, headers, limit: int = 1 << 62) -> BodyDecoder | None:
        """A decoder for an answer with these headers, or None when this module
        cannot read its body (another transfer or content coding)."""
        transfer = headers.get("transfer-encoding", "").strip().lower()
        coding = headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            return None
        if transfer:
            return cls(True, None, coding, limit) if transfer == "chunked" else None
        length = headers.get("content-length")
        if length is None:
            return cls(False, None, coding, limit)
        if not length.strip().isdigit():
            return None
        return cls(False, int(length), coding, limit)

    def feed(self, data: bytes) -> bytes:
        """Take ``data`` from the socket; return the body content it completes."""
        if self.done:
            self.extra = self.extra or bool(data)
            return b""  # bytes past the body's end are not the body's
        if not self.chunked:
            if self._left is not None:
                self.extra = len(data) > self._left
                data = data[: self._left]
                self._left -= len(data)
                self.done = self._left == 0
            return self._decoded(data)
        return self._decoded(self._dechunk(data))

    def at_eof(self) -> bool:
        """The connection ended: True when the body was whole (a close-delimited
        body ends just so)."""
        if not self.done and not self.chunked and self._left is None:
            self.done = True
        return self.done

    def _dechunk(self, data: bytes) -> bytes:
        buffer = self._buffer
        if not buffer and self._state == _SIZE:
            # The usual read: exactly one whole chunk (a streamed piece).
            end = data.find(b"\n", 0, MAX_LINE + 1)
            if end > 0:
                size = data[:end].rstrip(b"\r").split(b";", 1)[0].strip()
                if _HEX.fullmatch(size):
                    start, left = end + 1, int(size, 16)
                    if left and len(data) == start + left + 2 and data.endswith(b"\r\n"):
                        return data[start : start + left]
        buffer += data
        out = []
        pos = 0
        while self._state != _DONE:
            if self._state == _DATA:
                take = min(self._left, len(buffer) - pos)
                if take:
                    out.append(buffer[pos : pos + take])
                    pos += take
                    self._left -= take
                if self._left:
                    break
                self._state = _DATA_END
                continue
            end = buffer.find(b"\n", pos, pos + MAX_LINE + 1)
            if end < 0:
                if len(buffer) - pos > MAX_LINE:
                    raise BadBody("a chunk line is longer than 4096 bytes")
                break
            line = bytes(buffer[pos:end]).rstrip(b"\r")
            pos = end + 1
            if self._state == _DATA_END:
                if line:
                    raise BadBody("a chunk does not end where its size said")
                self._state = _SIZE
            elif self._state == _SIZE:
                size = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size):
                    raise BadBody("a chunk size is not a hex number")
                self._left = int(size, 16)
                self._state = _DATA if self._left else _TRAILER
            elif not line:  # _TRAILER: an empty line ends the trailers, and the body
                self._state = _DONE
                self.done = True
                self.extra = pos < len(buffer)
        del buffer[:pos]
        return b"".join(out)

    def _decoded(self, data: bytes) -> bytes:
        if self._inflate is None or not data:
            return data
        out = []
        while data and self._room > 0:
            inflate = self._inflate
            try:
                piece = inflate.decompress(data, self._room)
            except zlib.error:
                if self._inflated:
                    raise BadBody("the body's gzip or deflate coding is broken") from None
                # "deflate" sent raw, without its zlib header (as urllib3 allows).
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                self._inflated = True
                continue
            self._inflated = True
            self._room -= len(piece)
            out.append(piece)
            data = b""
            if inflate.eof and inflate.unused_data:
                # A gzip body may be several members, one after another.
                data = inflate.unused_data
                self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
        return b"".join(out)
