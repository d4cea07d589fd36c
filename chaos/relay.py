"""A TCP relay between network namespaces: ``python -m tests.faults.relay LISTEN=TARGET ...``
listens on each ``host:port`` LISTEN and joins every connection it accepts to a new one to
TARGET, bytes unchanged in both directions. Prints ``ready`` once every address listens.

The worker-Kafka partition test (tests/faults/test_worker_partition.py) runs one inside the
worker's namespace (its loopback ports, where the worker and Kafka's advertised address expect
the local stack) and one outside (on the veth addresses, to the stack's loopback ports): the
stack listens on 127.0.0.1 only, which another namespace cannot reach. The relays never drop
anything themselves; the partition is the kernel's, on the veth pair between them. When a new
upstream connection cannot be made (the pair is down) the accepted one is left open and
unanswered until its client gives up, as a connection into a partition stays silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

CHUNK = 1 << 16
CONNECT_TIMEOUT_S = 60.0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


async def _drain_until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(CHUNK):
            pass


def _handler(target: tuple[str, int]):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            await _drain_until_closed(reader)  # silent, as across a partition
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


async def main(mappings: list[str]) -> None:
    servers = []
    for mapping in mappings:
        listen, _, target = mapping.partition("=")
        host, port = _address(listen)
        servers.append(await asyncio.start_server(_handler(_address(target)), host, port))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
