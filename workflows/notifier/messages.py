"""What the low-balance e-mail says, built from the event alone (plain text, one MIME part).

The Message-ID derives from the event id, so over SMTP the copy a redelivery may send after a
crash carries the same Message-ID as the first (mail clients that deduplicate on it show one).
SES replaces Message-ID and Date with its own; X-Pinksea-Event names the event either way.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from uuid import UUID

from domain.units import format_credits

SUBJECT = "Your Pinksea credits are running low"
LINE_CHARS = 76


@dataclass(frozen=True)
class LowBalance:
    """One downward crossing: the data of a CreditAccount.LowBalanceReached envelope."""

    event_id: str  # <aggregate_id>:<version>
    aggregate_id: UUID
    version: int
    threshold_mc: int
    available_mc: int
    occurred_at: datetime

    def __post_init__(self) -> None:
        assert self.event_id == f"{self.aggregate_id}:{self.version}", self.event_id
        assert self.available_mc < self.threshold_mc, "a crossing is below its threshold"


def message_id(crossing: LowBalance, sender: str) -> str:
    domain = parseaddr(sender)[1].rpartition("@")[2] or "pinksea.local"
    return f"<low-balance.{crossing.aggregate_id}.{crossing.version}@{domain}>"


def low_balance_email(
    crossing: LowBalance, *, sender: str, to: str, billing_url: str, now: datetime
) -> EmailMessage:
    available = format_credits(crossing.available_mc)
    threshold = format_credits(crossing.threshold_mc)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = SUBJECT
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(crossing, sender)
    # RFC 3834: machine-sent, so auto-responders (out-of-office replies) stay quiet.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Pinksea-Event"] = crossing.event_id
    paragraphs = [
        "Hello,",
        f"your Pinksea balance is down to {available} credits, below {threshold} credits "
        "(a tenth of your plan's monthly credits).",
        "New jobs are accepted only while your balance covers their hold. To top up or change "
        f"your plan, go to {billing_url}",
        "We write once each time your balance falls below that line. To stop these e-mails, "
        'turn off "low-balance e-mails" in your account settings (PATCH /v1/me with '
        '{"low_balance_emails": false}).',
        "-- Pinksea",
    ]
    # Lines of at most 76 characters: the body travels as 7-bit text, readable as it is.
    text = "\n\n".join(
        textwrap.fill(p, LINE_CHARS, break_long_words=False, break_on_hyphens=False)
        for p in paragraphs
    )
    message.set_content(text + "\n")
    return message
