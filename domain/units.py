"""Units of the ledger: integer millicredits (mc).

1 credit = 1000 mc = 1000 GPU-milliseconds on the plan's own GPU tier. No float ever enters a
balance path; display strings are derived from integers.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

MC_PER_CREDIT = 1000
USD_PER_CREDIT = Decimal("0.005")


def credits_to_mc(credits: int | Decimal | str) -> int:
    """Whole or fractional credits (up to 3 decimals) to millicredits, exactly."""
    mc = Decimal(credits) * MC_PER_CREDIT
    if mc != mc.to_integral_value():
        raise ValueError(f"{credits} credits is finer than one millicredit")
    return int(mc)


def format_credits(mc: int) -> str:
    """Millicredits as a credits string with three decimals: 12345 -> '12.345'."""
    sign = "-" if mc < 0 else ""
    whole, milli = divmod(abs(mc), MC_PER_CREDIT)
    return f"{sign}{whole}.{milli:03d}"


def require_aware(at: datetime, name: str = "at") -> datetime:
    """Business times must carry a time zone; naive datetimes are ambiguous in an audit."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return at
