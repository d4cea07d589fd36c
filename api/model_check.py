"""What an uploaded model file really is: read once, hashed, its safetensors header parsed.

The facts go to the domain (``UserModel.complete``), which decides. The object is streamed to
a temporary file (never more than the limit and one byte) and hashed on the way; the
``safetensors`` library then parses its header, which checks the whole layout (a JSON header
whose offsets cover the file exactly) without reading a tensor. Nothing is ever unpickled: a
pickle, a torch zip archive or any other file fails that parse, whatever its name says.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any

from safetensors import SafetensorError, safe_open

from domain.user_models import LoraFacts

CHUNK_BYTES = 8 * 1024**2
CHUNKS_MAX = 1 + (1024**3 * 4) // CHUNK_BYTES  # a bound on the loop: 4 GiB, past any limit


def inspect_lora(body: Any, size_bytes_max: int) -> LoraFacts:
    """The facts of the stream ``body`` (an S3 object's): its size and sha256, and the tensor
    names of its safetensors header, or the problem that stops the header parsing."""
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(prefix="pinksea-model-", suffix=".safetensors") as file:
        for _ in range(CHUNKS_MAX):
            chunk = body.read(min(CHUNK_BYTES, size_bytes_max + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
            file.write(chunk)
            if size > size_bytes_max:
                return LoraFacts(size_bytes=size)  # the domain says why; the rest is unread
        file.flush()
        try:
            with safe_open(file.name, framework="numpy") as header:
                names = tuple(header.keys())
        except SafetensorError as e:
            reason = str(e).removeprefix("Error while deserializing header: ")
            return LoraFacts(
                size_bytes=size,
                problem=f"it is not a safetensors file ({reason}); pickles are never accepted",
            )
    return LoraFacts(size_bytes=size, sha256=digest.hexdigest(), tensor_names=names)
