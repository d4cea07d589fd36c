"""Deactivated accounts, refused on every authenticated request (tokens and API keys alike).

The truth is the credit account's ``Deactivated`` / ``Reactivated`` events (the domain also
refuses a deactivated account's submissions on its own). The per-request check is one Redis
``MGET`` of a flag per user, so it is fast and shared by every API process:

- **At once.** The admin's command writes the flag right after its event is saved, before
  it answers; the next request anywhere sees it. A flag reads ``<version>:<0|1>``: the
  account version at which the state holds. A write only replaces an older version (a Lua
  compare-and-set), so commands and rebuilds racing in any order converge on the newest state.
- **Redis lost or flushed.** A marker key with a TTL (``SYNC_EVERY_S``) goes with it; the
  first request that finds no marker rebuilds every flag from the ledger read model
  (``balances.deactivated`` with its ``status_version``) and sets the marker again. The TTL
  also makes the rebuild periodic, which repairs a flag that a command could not write.
  A deactivation not yet projected when Redis lost its flag is missed by that rebuild and
  restored by the next one (the domain refuses the account's jobs meanwhile).
- **Redis unreachable.** The check reads the account from the event store instead (the write
  side: exact, at a query per request), for a few seconds after each failure (the breaker,
  shared with the rate limiter: a request that found Redis hanging waits out one timeout).
- **The command could not write the flag** (Redis down then): the admin gets a 503 and
  repeats the command, which changes nothing more and writes the flag.
"""

from __future__ import annotations

import asyncio
import functools

import asyncpg
import redis.asyncio as redis
import structlog
from anyio import CapacityLimiter, to_thread
from redis.exceptions import RedisError

from api.cache import Breaker
from domain.application import PinkseaApplication
from domain.errors import NotFound

log = structlog.get_logger("api.deactivation")

SYNC_EVERY_S = 60  # how often the flags are rebuilt from the read model, at the latest

# KEYS[1] the flag, ARGV[1] the account version, ARGV[2] "1" deactivated / "0" active.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
return 1
"""

_FLAGGED = (
    "SELECT user_id, deactivated, status_version FROM balances WHERE status_version IS NOT NULL"
)


def _is_deactivated(flag: bytes | str | None) -> bool:
    if flag is None:
        return False
    text = flag.decode() if isinstance(flag, bytes) else flag
    return text.endswith(":1")


def _deactivated_in_store(application: PinkseaApplication, user_id: str) -> bool:
    try:
        return application.account(user_id).deactivated
    except NotFound:
        return False


class AccountFlags:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        pool: asyncpg.Pool,
        application: PinkseaApplication,
        limiter: CapacityLimiter,
        *,
        breaker: Breaker | None = None,
    ) -> None:
        self.client = client
        self.flag_prefix = f"{prefix}deactivated:"
        self.marker = f"{prefix}deactivated-synced"  # never a flag: ':' vs '-'
        self.pool = pool
        self.application = application
        self.limiter = limiter
        self.breaker = breaker or Breaker()
        self._rebuilding = asyncio.Lock()

    def key(self, user_id: str) -> str:
        return self.flag_prefix + user_id

    async def is_deactivated(self, user_id: str) -> bool:
        if not self.breaker.open:
            try:
                synced, flag = await self.client.mget(self.marker, self.key(user_id))
                if synced is None:
                    await self.rebuild()
                    flag = await self.client.get(self.key(user_id))
                return _is_deactivated(flag)
            except (RedisError, OSError) as e:
                self.breaker.trip()
                log.warning("deactivation flags unavailable: asking the event store", error=repr(e))
            except asyncpg.PostgresError as e:  # the rebuild's read; the next request retries
                log.warning("deactivation flags not rebuilt: asking the event store", error=repr(e))
        return await to_thread.run_sync(
            functools.partial(_deactivated_in_store, self.application, user_id),
            limiter=self.limiter,
        )

    async def publish(self, user_id: str, *, version: int, deactivated: bool) -> bool:
        """Write a command's outcome (at the account's ``version``). False when Redis did not
        take it: the caller must not report the change as enforced."""
        try:
            await self.client.eval(
                _SET_IF_NEWER, 1, self.key(user_id), version, "1" if deactivated else "0"
            )
        except (RedisError, OSError) as e:
            self.breaker.trip()
            log.warning("deactivation flag not written", user_id=user_id, error=repr(e))
            return False
        return True

    async def rebuild(self) -> int:
        """Every flag from the read model (older versions never overwrite newer ones), then the
        marker. One rebuild at a time per process; returns the flags written."""
        async with self._rebuilding:
            if await self.client.exists(self.marker):
                return 0  # another request (or process) just did it
            rows = await self.pool.fetch(_FLAGGED)
            async with self.client.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.eval(
                        _SET_IF_NEWER,
                        1,
                        self.key(row["user_id"]),
                        row["status_version"],
                        "1" if row["deactivated"] else "0",
                    )
                pipe.set(self.marker, "1", ex=SYNC_EVERY_S)
                await pipe.execute()
            log.info("deactivation flags rebuilt", accounts=len(rows))
            return len(rows)
