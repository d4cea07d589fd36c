"""What an uploaded object really is: decoded with Pillow, its format read from the bytes.

The facts go to the domain (``Upload.complete``), which decides. Only the three accepted
formats' decoders are tried, so a file in any other format (or none) never reaches a decoder;
an image declaring more than ``PIXELS_MAX`` pixels is refused from its header, before a byte
of it is decoded (a decompression bomb: a few kilobytes that decode to gigabytes). Pillow's
own guard (``Image.MAX_IMAGE_PIXELS``, DecompressionBombError past twice that) sits far
above this cap and is caught too. The rest is decoded in full, so a truncated or corrupt
file fails here rather than on a GPU worker.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from domain.uploads import CONTENT_TYPES, PIXELS_MAX, ImageFacts

FORMATS = [pillow for pillow, _ in CONTENT_TYPES.values()]


def inspect_image(data: bytes) -> ImageFacts:
    """The facts of ``data``: its format and size, or the problem that stops it decoding."""
    size = len(data)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            facts = ImageFacts(size, image.format, width, height)
            if width * height > PIXELS_MAX:
                return _problem(
                    facts,
                    f"it declares {width} x {height} pixels, more than the {PIXELS_MAX} this "
                    "service decodes (a decompression bomb is refused unread)",
                )
            if getattr(image, "n_frames", 1) > 1:
                return _problem(facts, "it is animated; send a still image")
            image.load()  # decodes every pixel: truncation and corruption show here
    except Image.DecompressionBombError as e:
        return ImageFacts(size, problem=f"it is a decompression bomb: {e}")
    except UnidentifiedImageError:
        return ImageFacts(size, problem="it is not a PNG, JPEG or WebP image")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # Pillow's decoders raise these for truncated or malformed data.
        return ImageFacts(size, problem=f"it is truncated or corrupt ({type(e).__name__})")
    return facts


def _problem(facts: ImageFacts, problem: str) -> ImageFacts:
    return ImageFacts(facts.size_bytes, facts.format, facts.width, facts.height, problem)
