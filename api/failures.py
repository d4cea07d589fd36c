"""What a job's owner reads of its failure.

A failure reason is written for operators: the worker's exception as text
(``OSError: [Errno 28] No space left on device: '/tmp/pinksea-models/sdxl/unet.bin'``), the S3
endpoint that did not answer, a CUDA message, the worker's host. Operators keep reading it
whole where they read it (the event store, the jobs read model, the GPU workers' and the
settler's logs, ``pinksea events``, the admin's ledger view). What the API shows the owner
(a job's view, its live status events, their own ledger) is :func:`public_failure_reason`:
one of a fixed set of sentences per kind of failure, and for a failure of the user's own
making (parameters the model cannot run) the worker's message scrubbed of file paths, stack
traces, URLs, addresses and host names (:func:`scrub`), so the user still learns what to fix.
"""

from __future__ import annotations

import ipaddress
import re

# Reasons written by the settler and the domain (workflows/settler.py, domain/application.py)
# and the codes the GPU workers put first (gpu_consumer/run.py, gpu_consumer/outputs.py).
BUDGET_REASON = "stopped at the hold's time budget"
NOT_BILLED = "platform failures are not billed"

PLATFORM = f"The run failed on our side (a GPU worker error); {NOT_BILLED}."
STORAGE = f"The images could not be stored (image storage was unavailable); {NOT_BILLED}."
OUT_OF_MEMORY = (
    f"The GPU ran out of memory running this job; {NOT_BILLED}. A smaller size or batch may fit."
)
STALE = f"The job waited too long for a GPU worker; {NOT_BILLED}."
WORKER_STOPPED = f"The GPU worker stopped during the run; {NOT_BILLED}."
BUDGET = "The job was stopped when it reached the GPU time held for it; the time it used is billed."
USER = "The model could not run these parameters"

_BY_PREFIX: tuple[tuple[str, str], ...] = (
    ("storage_unavailable", STORAGE),
    ("out of memory", OUT_OF_MEMORY),
    ("stale dispatch", STALE),
    ("the worker stopped during the run", WORKER_STOPPED),
)
_GAVE_UP = re.compile(r"gave up after (\d{1,3}) attempts")

#: Every sentence a platform failure can read as (tests hold the API to these).
PLATFORM_MESSAGES = frozenset(
    {PLATFORM, STORAGE, OUT_OF_MEMORY, STALE, WORKER_STOPPED} | {m for _, m in _BY_PREFIX}
)


GAVE_UP = "The job failed on our side on every attempt ({attempts}) and was stopped; " + (
    NOT_BILLED + "."
)
_GAVE_UP_PUBLIC = re.compile(re.escape(GAVE_UP).replace(re.escape("{attempts}"), r"\d{1,3}"))


def gave_up(attempts: int) -> str:
    return GAVE_UP.format(attempts=attempts)


def public_failure_reason(reason: str | None, fault: str | None) -> str | None:
    """The sentence the job's owner reads for ``reason`` (None: the job has not failed)."""
    if reason is None:
        return None
    text = reason.strip()
    if _is_public(text):
        return text  # already what the owner reads (a view read back from its JSON)
    if text == BUDGET_REASON:
        return BUDGET
    for prefix, message in _BY_PREFIX:
        if text.startswith(prefix):
            return message
    gave = _GAVE_UP.fullmatch(text)
    if gave:
        return gave_up(int(gave.group(1)))
    if fault == "user":
        detail = scrub(text)
        return f"{USER}: {detail}" if detail else f"{USER}."
    return PLATFORM


def _is_public(text: str) -> bool:
    return (
        text in PLATFORM_MESSAGES
        or text == BUDGET
        or text.startswith(USER)
        or _GAVE_UP_PUBLIC.fullmatch(text) is not None
    )


# A release of a job's hold after a platform failure names the failure in its statement line
# (domain/ledger_changes.py): "Job <id>: hold of 1.500 credits released (platform failure:
# <reason>)", maybe followed by ", 0.200 expired with their lot".
_RELEASED = re.compile(
    r"(?P<head>Job \S+: hold of \S+ credits released \(platform failure): .*\)"
    r"(?P<tail>(?:, \S+ expired with their lot)?)",
    re.DOTALL,
)


def public_ledger_description(description: str) -> str:
    """A statement line as its owner reads it: a hold released after a platform failure
    says so, without the worker's text."""
    released = _RELEASED.fullmatch(description)
    if released is None:
        return description
    return f"{released['head']}){released['tail']}"


# ------------------------------------------------------------------------------ scrubbing

MAX_DETAIL = 200

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|\n\s*File \"", re.IGNORECASE)
_EXCEPTION_NAME = re.compile(
    r"(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Warning|Job|Model|Full|Unavailable): "
)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"(),;]*")
# An absolute or home- or dot-relative path; a relative one with a letter in its first part
# (so that "65/8" stays arithmetic).
_ABSOLUTE_PATH = re.compile(r"(?<![\w./-])(?:~|\.{1,2})?/[^\s'\"(),;]*")
_RELATIVE_PATH = re.compile(r"\b[\w.-]*[A-Za-z][\w.-]*(?:/[\w.-]+)+/?")
_MEMORY = re.compile(r"\s*\bat 0x[0-9A-Fa-f]+|\b0x[0-9A-Fa-f]{6,}\b")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
_IPV6 = re.compile(r"\[?\b[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?\]?(?::\d{1,5})?")
_EC2_HOST = re.compile(r"\bip-\d{1,3}(?:-\d{1,3}){3}\b[\w.-]*")
# A dotted name whose last label starts with a letter (not a version number), with two dots
# or more or under a suffix that names a private network; and any name with a port.
_HOST = re.compile(r"\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z][A-Za-z0-9-]*\b")
_PRIVATE_SUFFIXES = (".internal", ".local", ".localdomain", ".lan", ".corp", ".home", ".svc")
_HOST_PORT = re.compile(r"\b[\w.-]*[A-Za-z][\w.-]*:\d{2,5}\b")
_LOCALHOST = re.compile(r"\blocalhost\b", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _host(match: re.Match[str]) -> str:
    name = match.group(0)
    if name.count(".") >= 2 or name.lower().endswith(_PRIVATE_SUFFIXES):
        return "<host>"
    return name


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    core = text.strip("[]").split("%")[0]
    if text.startswith("[") and "]:" in text:
        core = text[1 : text.index("]")].split("%")[0]
    try:
        ipaddress.IPv6Address(core)
    except ValueError:
        return text
    return "<address>"


def scrub(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` without what only operators may read: the first line before any stack trace,
    the exception's class name dropped, file paths, URLs, IP addresses, memory addresses and
    host names replaced by placeholders, at most ``limit`` characters."""
    traceback = _TRACEBACK.search(text)
    if traceback is not None:
        text = text[: traceback.start()]
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = _EXCEPTION_NAME.sub("", text, count=1) if _EXCEPTION_NAME.match(text) else text
    text = _URL.sub("<url>", text)
    text = _WINDOWS_PATH.sub("<path>", text)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    text = _RELATIVE_PATH.sub("<path>", text)
    text = _MEMORY.sub("", text)
    text = _IPV4.sub("<address>", text)
    text = _IPV6.sub(_ipv6, text)
    text = _EC2_HOST.sub("<host>", text)
    text = _HOST_PORT.sub("<address>", text)
    text = _HOST.sub(_host, text)
    text = _LOCALHOST.sub("<host>", text)
    text = _CONTROL.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" :;,")
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text
