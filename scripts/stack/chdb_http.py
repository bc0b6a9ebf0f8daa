#!/usr/bin/env python3
"""chdb_http.py - a ClickHouse-HTTP-interface front over an in-process chdb session.

DEVELOPMENT / TEST STAND-IN. THIS IS NOT A CLICKHOUSE SERVER.

Real ClickHouse (server or Cloud) cannot run on the flowlens development machines, but the
ClickHouse 26.9 engine is available in-process through the `chdb-core` wheel. This script puts
a small HTTP front over one persistent chdb session (one data directory) that speaks the subset
of ClickHouse's HTTP interface that the Rust `clickhouse` crate 0.15.3 (features lz4, inserter,
validation on) and curl-style tools use, so the sink and tests can run unmodified against it.

Supported:
  * GET / and GET /ping -> "Ok.\\n"; GET /?query=... runs the query.
  * POST with `query` in the URL, in the body, or in both (URL query + "\\n" + body, as
    ClickHouse does), chunked or Content-Length request bodies, multipart/form-data bodies
    (fields `query` and `param_*`, which the crate sends when query parameters are bound).
  * INSERT ... FORMAT <fmt> followed by data (URL query + body, or all in the body): the data
    is fed to chdb's streaming inserter (`Session.send_insert`) in the declared format
    (RowBinaryWithNamesAndTypes, RowBinary, Native, CSV, JSONEachRow, ...).
  * decompress=1: the request body is in ClickHouse's native compressed-block framing
    (16-byte CityHash128 v1.0.2 checksum, method byte 0x82 LZ4 / 0x90 ZSTD / 0x02 none,
    u32 compressed size incl. the 9-byte header, u32 uncompressed size, payload). Checksums
    are verified (pure-Python CityHash; --no-verify-checksums skips it for speed).
  * compress=1: the response is sent in the same framing (LZ4, correct checksums).
    The crate 0.15.3 never asks for this: for queries it sends `Accept-Encoding: lz4` and
    decodes only if the response has `Content-Encoding`; like a ClickHouse server with
    enable_http_compression=0 (the default), this front then answers uncompressed.
    With enable_http_compression=1 and Accept-Encoding lz4/zstd it answers with an LZ4/ZSTD
    frame-format body and `Content-Encoding` (as ClickHouse does).
  * `database` (USE for the duration of the request), `default_format` (TabSeparated if
    absent; a FORMAT clause in the query wins), `param_<name>` query parameters, any other
    URL parameter is a per-request setting (SET before the query, SET ... = DEFAULT after).
  * user / password via X-ClickHouse-User / X-ClickHouse-Key headers, Basic auth, or the
    `user`/`password` URL parameters: ignored unless --user/--password are given, then checked.
  * Errors: ClickHouse-like body (`Code: 60. DB::Exception: ... (UNKNOWN_TABLE)`), header
    X-ClickHouse-Exception-Code, HTTP status 400/403/404/500 mapped roughly as ClickHouse does.
  * X-ClickHouse-Summary / X-ClickHouse-Query-Id / X-ClickHouse-Format headers.

Not supported / different from a server: sessions (session_id is accepted and ignored; every
request shares the single chdb session, serialized by a lock), progress headers, query
cancellation, external data, readonly enforcement, users/quotas, native TCP protocol,
replication. Query results are materialised in memory before being sent; INSERT bodies are
read (and decompressed) completely before the data is handed to chdb, so a client that
aborts mid-body inserts nothing and a slow client never holds the session lock.

Usage:
  chdb_http.py --data-dir DIR [--host 127.0.0.1] [--port 18123] [--user U --password P]
Logs one line per request to stderr: method, status, ms, bytes in/out, query head.
"""

import argparse
import base64
import json
import re
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import chdb  # noqa: F401  (chdb-core; ClickHouse engine in-process)
from chdb import session as chdb_session

try:
    import pyarrow as pa  # LZ4 block ("lz4_raw") / LZ4 frame / ZSTD codecs
except ImportError:  # pragma: no cover
    pa = None

VERSION = "flowlens-chdb-http/1"

# ---------------------------------------------------------------------------------------------
# CityHash128 v1.0.2 (the variant ClickHouse uses for compressed-block checksums), pure Python.
# Ported from cityhash-rs 1.0.1 (v102.rs), which the clickhouse crate uses for the same purpose.
# ---------------------------------------------------------------------------------------------
_M = 0xFFFFFFFFFFFFFFFF
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F
_K3 = 0xC949D7C7509E6557
_KMUL = 0x9DDFEA08EB382D69
_u64 = struct.Struct("<Q").unpack_from
_u32 = struct.Struct("<I").unpack_from
_u64x4 = struct.Struct("<4Q").unpack_from


def _rotr(v, s):
    return ((v >> s) | (v << (64 - s))) & _M if s else v


def _shift_mix(v):
    return v ^ (v >> 47)


def _hash16(u, v):
    a = ((u ^ v) * _KMUL) & _M
    a ^= a >> 47
    b = ((v ^ a) * _KMUL) & _M
    b ^= b >> 47
    return (b * _KMUL) & _M


def _hash_0_to_16(s, off, n):
    if n > 8:
        a = _u64(s, off)[0]
        b = _u64(s, off + n - 8)[0]
        return _hash16(a, _rotr((b + n) & _M, n % 64)) ^ b
    if n >= 4:
        a = _u32(s, off)[0]
        return _hash16((n + (a << 3)) & _M, _u32(s, off + n - 4)[0])
    if n > 0:
        a = s[off]
        b = s[off + (n >> 1)]
        c = s[off + n - 1]
        y = (a + (b << 8)) & 0xFFFFFFFF
        z = (n + (c << 2)) & 0xFFFFFFFF
        return (_shift_mix(((y * _K2) ^ (z * _K3)) & _M) * _K2) & _M
    return _K2


def _weak32(s, off, a, b):
    w, x, y, z = _u64x4(s, off)
    a = (a + w) & _M
    b = _rotr((b + a + z) & _M, 21)
    c = a
    a = (a + x + y) & _M
    b = (b + _rotr(a, 44)) & _M
    return (a + z) & _M, (b + c) & _M


def _city_murmur(s, off, n, a, b):
    if n <= 16:
        a = (_shift_mix((a * _K1) & _M) * _K1) & _M
        c = (b * _K1 + _hash_0_to_16(s, off, n)) & _M
        d = _shift_mix((a + (_u64(s, off)[0] if n >= 8 else c)) & _M)
    else:
        c = _hash16((_u64(s, off + n - 8)[0] + _K1) & _M, a)
        d = _hash16((b + n) & _M, (c + _u64(s, off + n - 16)[0]) & _M)
        a = (a + d) & _M
        while True:
            a ^= (_shift_mix((_u64(s, off)[0] * _K1) & _M) * _K1) & _M
            a = (a * _K1) & _M
            b ^= a
            c ^= (_shift_mix((_u64(s, off + 8)[0] * _K1) & _M) * _K1) & _M
            c = (c * _K1) & _M
            d ^= c
            off += 16
            n -= 16
            if n <= 16:
                break
    a = _hash16(a, c)
    b = _hash16(d, b)
    d = _hash16(b, a)
    a ^= b
    return a, d


def _city128_seed(s, off, n, x, y):
    if n < 128:
        return _city_murmur(s, off, n, x, y)
    end = off + n
    z = (n * _K1) & _M
    v0 = (_rotr(y ^ _K1, 49) * _K1 + _u64(s, off)[0]) & _M
    v1 = (_rotr(v0, 42) * _K1 + _u64(s, off + 8)[0]) & _M
    w0 = (_rotr((y + z) & _M, 35) * _K1 + x) & _M
    w1 = (_rotr((x + _u64(s, off + 88)[0]) & _M, 53) * _K1) & _M
    while True:
        for _ in (0, 1):
            x = (_rotr((x + y + v0 + _u64(s, off + 16)[0]) & _M, 37) * _K1) & _M
            y = (_rotr((y + v1 + _u64(s, off + 48)[0]) & _M, 42) * _K1) & _M
            x ^= w1
            y ^= v0
            z = _rotr(z ^ w0, 33)
            v0, v1 = _weak32(s, off, (v1 * _K1) & _M, (x + w0) & _M)
            w0, w1 = _weak32(s, off + 32, (z + w1) & _M, y)
            z, x = x, z
            off += 64
        if end - off < 128:
            break
    rem = end - off
    y = (y + _rotr(w0, 37) * _K0 + z) & _M
    x = (x + _rotr((v0 + z) & _M, 49) * _K0) & _M
    tail = 0
    while tail < rem:
        tail += 32
        y = (_rotr((y - x) & _M, 42) * _K0 + v1) & _M
        w0 = (w0 + _u64(s, end - tail + 16)[0]) & _M
        x = (_rotr(x, 49) * _K0 + w0) & _M
        w0 = (w0 + v0) & _M
        v0, v1 = _weak32(s, end - tail, v0, v1)
    x = _hash16(x, v0)
    y = _hash16(y, w0)
    first = (_hash16((x + v1) & _M, w1) + y) & _M
    second = _hash16((x + w1) & _M, (y + v1) & _M)
    return first, second


def cityhash128_v102(data):
    """CityHash128 v1.0.2 -> (first, second) as ClickHouse's uint128 (low64, high64)."""
    s = memoryview(data)
    n = len(s)
    if n >= 16:
        return _city128_seed(s, 16, n - 16, _u64(s, 0)[0] ^ _K3, _u64(s, 8)[0])
    if n >= 8:
        return _city128_seed(s, 0, 0, _u64(s, 0)[0] ^ ((n * _K0) & _M), _u64(s, n - 8)[0] ^ _K1)
    return _city128_seed(s, 0, n, _K0, _K1)


def checksum_bytes(header_and_payload):
    first, second = cityhash128_v102(header_and_payload)
    return struct.pack("<QQ", first, second)


# ---------------------------------------------------------------------------------------------
# ClickHouse native compressed-block framing
# ---------------------------------------------------------------------------------------------
METHOD_NONE, METHOD_LZ4, METHOD_ZSTD = 0x02, 0x82, 0x90
_FRAME_HDR = struct.Struct("<BII")


class CHError(Exception):
    """An error reported to the client the way ClickHouse does."""

    def __init__(self, code, message, status=None):
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.status = status


_NAMED_CODES = {
    40: "CHECKSUM_DOESNT_MATCH", 62: "SYNTAX_ERROR", 89: "UNKNOWN_COMPRESSION_METHOD",
    271: "CANNOT_DECOMPRESS", 516: "AUTHENTICATION_FAILED", 1001: "STD_EXCEPTION",
    33: "CANNOT_READ_ALL_DATA", 115: "UNKNOWN_SETTING",
}


def ch_error(code, text):
    return CHError(code, f"Code: {code}. DB::Exception: {text}. ({_NAMED_CODES.get(code, 'UNKNOWN')})")


class FrameDecoder:
    """Incrementally decodes ClickHouse compressed blocks from arbitrary byte chunks."""

    def __init__(self, verify=True):
        self.buf = bytearray()
        self.verify = verify

    def feed(self, chunk):
        self.buf += chunk
        out = []
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 25:
            method, csize, usize = _FRAME_HDR.unpack_from(buf, pos + 16)
            if csize < 9 or csize > (1 << 30) or usize > (1 << 30):
                raise ch_error(271, f"Too large size of compressed block: {csize} (compressed) / {usize} (uncompressed)")
            if len(buf) - pos < 16 + csize:
                break
            body = memoryview(buf)[pos + 16: pos + 16 + csize]
            if self.verify:
                actual = checksum_bytes(body)
                if actual != bytes(buf[pos: pos + 16]):
                    raise ch_error(40, "Checksum doesn't match: corrupted data. Reference: "
                                   f"{bytes(buf[pos:pos + 16]).hex()}. Actual: {actual.hex()}")
            payload = body[9:]
            if method == METHOD_LZ4:
                out.append(pa.decompress(payload, decompressed_size=usize, codec="lz4_raw", asbytes=True))
            elif method == METHOD_ZSTD:
                out.append(pa.decompress(payload, decompressed_size=usize, codec="zstd", asbytes=True))
            elif method == METHOD_NONE:
                out.append(bytes(payload))
            else:
                raise ch_error(89, f"Unknown compression method: {method:#x}")
            payload.release()
            body.release()
            pos += 16 + csize
        if pos:
            del buf[:pos]
        return out

    def finish(self):
        if self.buf:
            raise ch_error(33, f"Cannot read all data: {len(self.buf)} trailing bytes of an incomplete compressed block")


def encode_frames(data, block=1 << 20):
    """ClickHouse compressed-block framing (LZ4, with checksums) for compress=1 responses."""
    out = []
    mv = memoryview(data)
    for i in range(0, len(mv), block) or [0]:
        raw = mv[i: i + block]
        comp = pa.compress(raw, codec="lz4_raw", asbytes=True)
        hdr = _FRAME_HDR.pack(METHOD_LZ4, 9 + len(comp), len(raw))
        out.append(checksum_bytes(hdr + comp) + hdr + comp)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Request handling
# ---------------------------------------------------------------------------------------------
RESERVED_PARAMS = {
    "query", "database", "default_format", "decompress", "compress", "user", "password",
    "query_id", "session_id", "session_timeout", "session_check", "quota_key", "role",
    "buffer_size", "wait_end_of_query", "stacktrace", "http_wait_end_of_query",
}
# Roughly ClickHouse's HTTPHandler mapping from exception code to HTTP status.
_STATUS_400 = {6, 25, 26, 27, 32, 38, 41, 53, 62, 69, 70, 72, 117, 118, 130, 131, 167, 168, 173, 174, 190, 349, 1000}
_STATUS_404 = {46, 47, 60, 63, 73, 81, 82, 115, 133, 168}
_STATUS_403 = {192, 193, 194, 195, 196, 497, 516}

_INSERT_FORMAT_RE = re.compile(
    rb"^\s*INSERT\s+INTO\s.*?\bFORMAT\s+([A-Za-z0-9_]+)", re.IGNORECASE | re.DOTALL)
_FORMAT_CLAUSE_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_CODE_RE = re.compile(r"Code:\s*(\d+)")


def status_for(code):
    if code in _STATUS_403:
        return 403
    if code in _STATUS_404:
        return 404
    if code in _STATUS_400:
        return 400
    return 500


def from_chdb_error(exc):
    text = str(exc).strip()
    for prefix in ("Streaming insert append failed: ", "Streaming insert finish failed: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    m = _CODE_RE.search(text)
    if m:
        start = m.start()
        return CHError(int(m.group(1)), text[start:])
    return CHError(1001, f"Code: 1001. DB::Exception: {text}. (STD_EXCEPTION)")


def sql_quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_insert(head):
    """For `INSERT ... FORMAT fmt<data>` return (statement, fmt, data offset) else None."""
    m = _INSERT_FORMAT_RE.match(head)
    if not m:
        return None
    stmt = head[: m.start(0) + m.group(0).upper().rfind(b"FORMAT")]
    pos = m.end(0)
    # ClickHouse's ParserInsertQuery: skip spaces/tabs/form-feeds, then one optional \r\n.
    while pos < len(head) and head[pos] in b" \t\f":
        pos += 1
    if pos < len(head) and head[pos] == 0x0D:
        pos += 1
    if pos < len(head) and head[pos] == 0x0A:
        pos += 1
    return stmt.decode("utf-8", "replace"), m.group(1).decode(), pos


class Front:
    def __init__(self, args):
        self.args = args
        self.session = chdb_session.Session(args.data_dir)
        self.lock = threading.Lock()
        self.default_db = args.database
        if self.default_db != "default":
            self.session.query(f"CREATE DATABASE IF NOT EXISTS `{self.default_db}`")
        self.session.query(f"USE `{self.default_db}`")
        self.version = self.session.query("SELECT version()", "TabSeparated").bytes().decode().strip()

    def run(self, sql_head, body_chunks, params, settings, database, default_format):
        """Executes one request under the session lock. Returns (payload, fmt, summary)."""
        t0 = time.monotonic()
        ins = split_insert(sql_head) if sql_head is not None else None
        with self.lock:
            applied = []
            try:
                if database and database != self.default_db:
                    self.session.query(f"USE `{database.replace('`', '')}`")
                for name, value in settings.items():
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                        raise ch_error(115, f"Unknown setting '{name}'")
                    self.session.query(f"SET {name} = {sql_quote(value)}")
                    applied.append(name)
                if ins is not None:
                    stmt, fmt, data_off = ins
                    inserter = self.session.send_insert(stmt, fmt)
                    try:
                        if data_off < len(sql_head):
                            inserter.append(bytes(sql_head[data_off:]))
                        for chunk in body_chunks or ():
                            if chunk:
                                inserter.append(chunk)
                        res = inserter.finish()
                    except BaseException:
                        inserter.cancel()
                        raise
                    summary = {"written_rows": res.rows_written, "written_bytes": res.bytes_written}
                    return b"", None, summary, t0
                sql = sql_head if body_chunks is None else sql_head + b"".join(body_chunks)
                sql = sql.decode("utf-8")
                m = _FORMAT_CLAUSE_RE.search(sql)
                fmt = m.group(1) if m else (default_format or "TabSeparated")
                res = self.session.query(sql, fmt, params=params or None)
                payload = res.bytes()
                summary = {"read_rows": res.rows_read(), "read_bytes": res.bytes_read(),
                           "written_rows": res.rows_written(), "written_bytes": res.bytes_written(),
                           "result_rows": res.rows_read(), "result_bytes": len(payload)}
                return payload, fmt, summary, t0
            except CHError:
                raise
            except Exception as exc:  # chdb errors carry "Code: N. DB::Exception: ..."
                raise from_chdb_error(exc) from None
            finally:
                for name in applied:
                    try:
                        self.session.query(f"SET {name} = DEFAULT")
                    except Exception:
                        pass
                if database and database != self.default_db:
                    try:
                        self.session.query(f"USE `{self.default_db}`")
                    except Exception:
                        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = VERSION
    front: Front = None

    def log_message(self, fmt, *args):  # silence the default access log; we log ourselves
        pass

    # -- body ----------------------------------------------------------------------------
    def _iter_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        rf = self.rfile
        if "chunked" in te:
            while True:
                line = rf.readline(65537)
                if not line:
                    raise ch_error(33, "Cannot read all data: connection closed inside a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        t = rf.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return
                data = rf.read(size)
                if len(data) != size:
                    raise ch_error(33, "Cannot read all data: truncated chunk")
                rf.readline(3)
                self.bytes_in += size
                yield data
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = rf.read(min(remaining, 1 << 20))
                if not data:
                    raise ch_error(33, "Cannot read all data: connection closed before Content-Length bytes")
                remaining -= len(data)
                self.bytes_in += len(data)
                yield data

    def _read_body(self, decompress):
        chunks = []
        dec = FrameDecoder(self.front.args.verify_checksums) if decompress else None
        for c in self._iter_body():
            if dec:
                chunks.extend(dec.feed(c))
            else:
                chunks.append(c)
        if dec:
            dec.finish()
        return chunks

    # -- responses -----------------------------------------------------------------------
    def _send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.bytes_out = len(body)
        self.status = status
        if status >= 400:
            self.error_text = body[:300].decode("utf-8", "replace").strip()

    def _send_error(self, err):
        status = err.status or status_for(err.code)
        msg = err.message
        if "(version " not in msg:
            msg = f"{msg} (version {self.front.version} (chdb_http stand-in))"
        self._send(status, (msg + "\n").encode(), [
            ("Content-Type", "text/plain; charset=UTF-8"),
            ("X-ClickHouse-Exception-Code", str(err.code)),
        ])

    def _auth(self, qs):
        user = self.headers.get("X-ClickHouse-User") or qs.get("user")
        password = self.headers.get("X-ClickHouse-Key") or qs.get("password")
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                user, password = u, p
            except Exception:
                pass
        args = self.front.args
        if args.user is not None and (user or "default") != args.user:
            raise CHError(516, f"Code: 516. DB::Exception: {user or 'default'}: Authentication failed: "
                          "password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)")
        if args.password is not None and (password or "") != args.password:
            raise CHError(516, f"Code: 516. DB::Exception: {user or 'default'}: Authentication failed: "
                          "password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)")

    # -- entry points --------------------------------------------------------------------
    def do_GET(self):
        self._handle(post=False)

    def do_HEAD(self):
        self._handle(post=False)

    def do_POST(self):
        self._handle(post=True)

    def _handle(self, post):
        t0 = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.error_text = ""
        head_for_log = ""
        url = urllib.parse.urlsplit(self.path)
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        qs = {}
        for k, v in pairs:
            qs[k] = v  # the last occurrence wins, as in ClickHouse
        try:
            path = url.path.rstrip("/") or "/"
            if path in ("/ping", "/replicas_status") or (path == "/" and "query" not in qs and not post):
                self._drain_quietly()
                self._send(200, b"Ok.\n", [("Content-Type", "text/html; charset=UTF-8")])
                return
            if path not in ("/", "/query"):
                self._drain_quietly()
                raise CHError(1000, f"Code: 1000. DB::Exception: There is no handle {url.path}. (UNKNOWN)", 404)
            self._auth(qs)
            params = {k[6:]: v for k, v in qs.items() if k.startswith("param_")}
            settings = {k: v for k, v in qs.items() if k not in RESERVED_PARAMS and not k.startswith("param_")}
            decompress = qs.get("decompress") == "1"
            ctype = self.headers.get("Content-Type") or ""
            url_query = qs.get("query")
            head_for_log = url_query or ""
            if post and ctype.lower().startswith("multipart/form-data"):
                fields = parse_multipart(b"".join(self._read_body(decompress)), ctype)
                for k, v in fields.items():
                    if k.startswith("param_"):
                        params[k[6:]] = v.decode("utf-8")
                if "query" in fields:
                    url_query = (url_query + "\n" if url_query else "") + fields["query"].decode("utf-8")
                head, chunks = (url_query or "").encode(), None
            elif url_query is not None:
                head = url_query.encode()
                chunks = self._read_body(decompress) if post else None
                if chunks:
                    head += b"\n"
                elif chunks is not None:
                    chunks = None
            else:
                chunks = self._read_body(decompress) if post else []
                head, chunks = b"".join(chunks), None
            if not head.strip():
                raise ch_error(62, "Empty query")
            head_for_log = head[:100].decode("utf-8", "replace")
            payload, fmt, summary, _ = self.front.run(
                head, chunks, params, settings, qs.get("database"), qs.get("default_format"))
            summary = dict(summary)
            summary.setdefault("read_rows", 0)
            summary.setdefault("read_bytes", 0)
            summary["elapsed_ns"] = int((time.monotonic() - t0) * 1e9)
            headers = [
                ("X-ClickHouse-Query-Id", qs.get("query_id") or str(uuid.uuid4())),
                ("X-ClickHouse-Summary", json.dumps({k: str(v) for k, v in summary.items()})),
                ("X-ClickHouse-Server-Display-Name", "chdb_http"),
                ("Content-Type", "text/plain; charset=UTF-8" if fmt in (None, "TabSeparated", "TSV", "CSV")
                 else "application/octet-stream"),
            ]
            if fmt:
                headers.append(("X-ClickHouse-Format", fmt))
            if qs.get("compress") == "1":
                payload = encode_frames(payload)
            elif settings.get("enable_http_compression") == "1":
                ae = (self.headers.get("Accept-Encoding") or "").lower()
                if "lz4" in ae:
                    payload = pa.compress(payload, codec="lz4", asbytes=True)
                    headers.append(("Content-Encoding", "lz4"))
                elif "zstd" in ae:
                    payload = pa.compress(payload, codec="zstd", asbytes=True)
                    headers.append(("Content-Encoding", "zstd"))
            self._send(200, payload, headers)
        except CHError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self.status = 499
        except Exception as exc:  # a bug here, not in the query
            self.close_connection = True
            self._send_error(CHError(1001, f"Code: 1001. DB::Exception: {type(exc).__name__}: {exc}. (STD_EXCEPTION)"))
        finally:
            ms = (time.monotonic() - t0) * 1000
            q = " ".join(head_for_log.split())[:80]
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.command} {self.status} {ms:.1f}ms "
                             f"in={self.bytes_in} out={self.bytes_out} {q}"
                             + (f" -> {self.error_text}" if self.error_text else "") + "\n")

    def _drain_quietly(self):
        try:
            for _ in self._iter_body():
                pass
        except CHError:
            self.close_connection = True


def parse_multipart(body, ctype):
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        raise ch_error(62, "multipart/form-data without boundary")
    boundary = b"--" + m.group(1).encode()
    fields = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        hdrs, _, value = part.partition(b"\r\n\r\n")
        if value.endswith(b"\r\n"):
            value = value[:-2]
        nm = re.search(rb'name="([^"]*)"', hdrs)
        if nm:
            fields[nm.group(1).decode()] = value
    return fields


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="chdb session directory (persistent)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18123)
    ap.add_argument("--database", default="default", help="default database (created if missing)")
    ap.add_argument("--user", default=None, help="if set, requests must use this user")
    ap.add_argument("--password", default=None, help="if set, requests must use this password")
    ap.add_argument("--no-verify-checksums", dest="verify_checksums", action="store_false",
                    help="skip CityHash128 verification of decompress=1 blocks (faster)")
    args = ap.parse_args()
    if pa is None:
        sys.exit("chdb_http: pyarrow is required (LZ4/ZSTD codecs)")
    Handler.front = Front(args)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.request_queue_size = 128
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    sys.stderr.write(f"chdb_http: ClickHouse {Handler.front.version} (chdb, in-process) on "
                     f"http://{args.host}:{args.port}/ data={args.data_dir} (development stand-in)\n")
    sys.stderr.flush()
    import signal

    def _stop(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
        with Handler.front.lock:
            Handler.front.session.close()
        sys.stderr.write("chdb_http: stopped\n")


if __name__ == "__main__":
    main()
