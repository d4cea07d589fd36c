"""A TCP relay between network namespaces: ``python -m chaos.relay LISTEN=TARGET ...`` listens
on each ``host:port`` LISTEN and joins every connection it accepts to a new one to TARGET,
bytes unchanged in both directions. Prints ``ready`` once every address listens.

The stack listens on 127.0.0.1 only, which another network namespace cannot reach: the
partitions (chaos/partition.py) carry its ports over veth pairs with a relay at each end. The
relays never drop anything themselves; the partition is the kernel's, on the veth pair between
them. When a new upstream connection is refused (the service is down) the accepted one is
reset, as the service would; when it cannot be made at all (the pair is down) the accepted one
is left open and unanswered until its client gives up, as a connection into a partition stays
silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

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


def _handler(
    target: tuple[str, int],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), CONNECT_TIMEOUT_S
            )
        except ConnectionRefusedError:
            writer.transport.abort()  # refused: a reset, as the service's own refusal
            return
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
