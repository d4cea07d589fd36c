"""How an e-mail leaves: SMTP (the local stack's aiosmtpd) or Amazon SES v2 (production).

Both send the same MIME message (SES as raw content, so the headers we set travel unchanged)
and sort every failure into one of two kinds, because the notifier acts differently on each:

- TransientSendError: the message may go through later (server down, timeout, throttled,
  4xx, sending paused). Nothing is recorded; the event is retried, the partition waits.
- PermanentSendError: this message will never go through (5xx, address rejected). Recorded
  as failed, and the notifier moves on: one bad address must not stop everyone's e-mails.

The clients are blocking (smtplib, boto3): each send runs on a worker thread, bounded by the
timeouts below.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Protocol

from infra.settings import Settings

SMTP_TIMEOUT_S = 10.0
SES_CONNECT_TIMEOUT_S = 5.0
SES_READ_TIMEOUT_S = 10.0
SES_MAX_ATTEMPTS = 3  # botocore's standard retry mode, first attempt included

# SES v2 error codes after which the same request can never succeed.
SES_PERMANENT = frozenset(
    {"MessageRejected", "BadRequestException", "MailFromDomainNotVerifiedException"}
)


class SendError(Exception):
    pass


class TransientSendError(SendError):
    """Retry later: nothing was (knowingly) delivered."""


class PermanentSendError(SendError):
    """Never retry: the receiving side refused this message."""


class Transport(Protocol):
    name: str

    async def send(self, message: EmailMessage) -> str:
        """Send ``message``; returns the transport's id of it (Message-ID, SES MessageId)."""
        ...


def _recipient(message: EmailMessage) -> str:
    to = parseaddr(str(message["To"]))[1]
    assert to, "a message has exactly one recipient"
    return to


class SmtpTransport:
    name = "smtp"

    def __init__(self, host: str, port: int, timeout_s: float = SMTP_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> str:
        await asyncio.to_thread(self._send, message)
        return str(message["Message-ID"])

    def _send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as e:
            # One recipient per message: its reply code is the answer.
            codes = [code for code, _ in e.recipients.values()]
            raise _by_code(min(codes, default=0), f"recipient refused: {e.recipients}") from e
        except smtplib.SMTPResponseException as e:  # sender refused, data refused, ...
            raise _by_code(e.smtp_code, f"{e.smtp_code} {e.smtp_error!r}") from e
        except (smtplib.SMTPException, OSError) as e:  # refused, reset, timed out, disconnected
            raise TransientSendError(f"SMTP {self.host}:{self.port}: {e!r}") from e


def _by_code(code: int, detail: str) -> SendError:
    """RFC 5321: 5xx is a permanent negative reply, 4xx a transient one."""
    if 500 <= code < 600:
        return PermanentSendError(f"SMTP {detail}")
    return TransientSendError(f"SMTP {detail}")


class SesTransport:
    name = "ses"

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> SesTransport:
        import boto3  # lazily: the local (SMTP) notifier does not pay for it
        from botocore.config import Config

        client = boto3.client(
            "sesv2",
            endpoint_url=settings.ses_endpoint_url or None,  # empty: AWS's own endpoint
            region_name=settings.ses_region,
            config=Config(
                connect_timeout=SES_CONNECT_TIMEOUT_S,
                read_timeout=SES_READ_TIMEOUT_S,
                retries={"mode": "standard", "max_attempts": SES_MAX_ATTEMPTS},
            ),
        )
        return cls(client)

    async def send(self, message: EmailMessage) -> str:
        return await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.send_email(
                FromEmailAddress=str(message["From"]),
                Destination={"ToAddresses": [_recipient(message)]},
                Content={"Raw": {"Data": message.as_bytes()}},
            )
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            kind = PermanentSendError if code in SES_PERMANENT else TransientSendError
            raise kind(f"SES {code}: {e}") from e
        except BotoCoreError as e:  # endpoint unreachable, timeouts, no credentials
            raise TransientSendError(f"SES: {e!r}") from e
        return str(response["MessageId"])


def build_transport(settings: Settings) -> Transport:
    if settings.email_backend == "ses":
        return SesTransport.from_settings(settings)
    return SmtpTransport(settings.smtp_host, settings.smtp_port)
