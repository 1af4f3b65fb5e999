"""PooledBufferedProtocol over TLS: byte-exact echo, every buffer back.

asyncio's TLS transport reads into slices of what get_buffer() returns and
calls it with any sizehint, 0 included; the protocol must hand it a
memoryview (a bytearray's slices are copies: data would be lost).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT, close, shut_down

from aiomempool import (
    GFP_ATOMIC,
    Mempool,
    PooledBufferedProtocol,
    buffer_arena,
    buffer_pool,
)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pass
    else:
        _with_cryptography(cert, key)
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("TLS test needs the cryptography package or an openssl binary")
    command = [
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        "-days", "1", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _with_cryptography(cert: Path, key: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


class Echo(PooledBufferedProtocol):
    def __init__(self, pool: Mempool[memoryview]) -> None:
        super().__init__(pool)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def view_received(self, view: memoryview) -> None:
        self.transport.write(bytes(view))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # Python 3.10's SSL transport counts as unclosed, and warns when
        # collected, unless its protocol closes it, even after the peer left.
        self.transport.close()
        if not self.lost.done():
            self.lost.set_result(None)


class SlowEcho(Echo):
    """Hands every buffer whole to a worker that echoes it later, so that
    buffers stay out and the pool runs dry."""

    def __init__(self, pool: Mempool[memoryview], work: asyncio.Queue[Any]) -> None:
        super().__init__(pool)
        self.work = work

    def view_received(self, view: memoryview) -> None:
        self.work.put_nowait((self, self.take_buffer(), len(view)))


@asynccontextmanager
async def tls_server(
    tmp_path: Path, factory: Callable[[], Echo]
) -> AsyncIterator[Callable[[], Awaitable[Streams]]]:
    """A TLS server on 127.0.0.1 with a certificate made for the test;
    yields a function that connects a client to it. On exit, every
    connection must end; the server is closed."""
    cert, key = make_certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    made: list[Echo] = []

    def make() -> Echo:
        made.append(factory())
        return made[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]

    async def connect() -> Streams:
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            ),
            TIMEOUT,
        )

    try:
        yield connect
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), TIMEOUT)
    finally:
        await shut_down(server, made)


@pytest.mark.asyncio
async def test_echo_over_tls_is_byte_exact_and_returns_every_buffer(
    tmp_path: Path,
) -> None:
    pool = buffer_pool(4096, min_nr=2, max_nr=32)

    async def client(connect: Callable[[], Awaitable[Streams]], seed: int) -> None:
        rng = random.Random(seed)
        reader, writer = await connect()
        try:
            for size in (1, 100, 4095, 4096, 4097, 20_000, 100_000, 17):
                data = rng.randbytes(size)
                writer.write(data)
                got = await asyncio.wait_for(reader.readexactly(size), TIMEOUT)
                assert got == data
        finally:
            await close(writer)

    async with tls_server(tmp_path, lambda: Echo(pool)) as connect:
        await asyncio.gather(*(client(connect, seed) for seed in range(3)))
    assert pool.stats().outstanding == 0
    got = [pool.alloc_nowait(GFP_ATOMIC) for _ in range(32)]
    assert None not in got
    for buf in got:
        pool.free(buf)


@pytest.mark.asyncio
async def test_dry_pool_over_tls_pauses_reading_and_loses_nothing(
    tmp_path: Path,
) -> None:
    pool = buffer_pool(4096, min_nr=1, max_nr=3, headroom=0)
    work: asyncio.Queue[tuple[SlowEcho, memoryview, int]] = asyncio.Queue()

    async def worker() -> None:
        while True:
            protocol, buf, nbytes = await work.get()
            await asyncio.sleep(0.001)  # slower than the clients
            if not protocol.transport.is_closing():
                protocol.transport.write(bytes(buf[:nbytes]))
            pool.free(buf)

    async def client(connect: Callable[[], Awaitable[Streams]], seed: int) -> None:
        data = random.Random(seed).randbytes(60_000)
        reader, writer = await connect()
        try:
            writer.write(data)
            got = await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)
            assert got == data
        finally:
            await close(writer)

    consumer = asyncio.ensure_future(worker())
    try:
        async with tls_server(tmp_path, lambda: SlowEcho(pool, work)) as connect:
            await asyncio.gather(*(client(connect, seed) for seed in range(4)))
    finally:
        consumer.cancel()
    stats = pool.stats()
    assert stats.waits > 0  # the pool ran dry, and connections waited
    assert stats.outstanding == 0


class LineEcho(Echo):
    """Echoes complete lines; keeps an incomplete one (on an arena: in a
    buffer of its size)."""

    def view_received(self, view: memoryview) -> None:
        end = bytes(view).rfind(b"\n") + 1
        if end:
            self.transport.write(bytes(view[:end]))
        if end < len(view):
            self.keep_buffer(end)


@pytest.mark.asyncio
async def test_peers_holding_half_a_line_over_tls_do_not_starve_a_client(
    tmp_path: Path,
) -> None:
    # 80 peers each holding half a line would pin 80 receive buffers of
    # 64 KiB (5 MiB); the arena's budget is 2 MiB, and they hold 256 bytes
    # each.
    classes = (256, 4096, 65536)
    arena = buffer_arena(2 << 20, classes=classes, headroom=0, trim_after=None)
    async with tls_server(tmp_path, lambda: LineEcho(arena)) as connect:  # type: ignore[arg-type]
        peers = [await connect() for _ in range(80)]
        for _, writer in peers:
            writer.write(b"half a li")
            await writer.drain()
        await asyncio.sleep(0.3)
        receive = arena.stats().classes[-1]
        assert receive.pool.outstanding == 0
        reader, writer = await connect()
        loop = asyncio.get_running_loop()
        start = loop.time()
        writer.write(b"PING\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"PING\n"
        assert loop.time() - start < 1.0
        await close(writer)
        for i, (r, w) in enumerate(peers):
            w.write(b"ne %d\n" % i)
            assert await asyncio.wait_for(r.readline(), TIMEOUT) == (
                b"half a line %d\n" % i
            )
            await close(w)
    assert arena.stats().total.outstanding == 0
    arena.close()
