"""Image bytes as a reviewer's browser receives them.

Every image is re-encoded the same way before it is served (the original bytes stay in the
database for export): RGB PNG, no ancillary chunks, stored (uncompressed) deflate blocks. The
length of such a file depends only on the width and height, so neither ``Content-Length`` nor the
file's structure says anything about the picture. A compressed encoding would leak how
compressible the picture is, and that is what separates real photographs (sensor noise, JPEG
artefacts) from smoother synthetic samples: QC items would be recognisable by size.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image as PILImage

MEDIA_TYPE = "image/png"
CACHE_BYTES = 64 * 1024 * 1024


def blind_png(data: bytes) -> bytes:
    """The pixels of ``data`` (PNG or JPEG) as an uncompressed RGB PNG without metadata."""
    with PILImage.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    # A fresh image carries no info dict, so no ICC profile, gamma, dpi or text is copied over.
    clean = PILImage.frombytes("RGB", rgb.size, rgb.tobytes())
    out = io.BytesIO()
    clean.save(out, format="PNG", compress_level=0)
    return out.getvalue()


class ServedImages:
    """A bounded least-recently-used cache of re-encoded images, by image uid (images never change)."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, uid: str) -> bytes | None:
        with self._lock:
            data = self._items.get(uid)
            if data is not None:
                self._items.move_to_end(uid)
            return data

    def put(self, uid: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(uid, None)
            self._size += len(data) - (len(old) if old else 0)
            self._items[uid] = data
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)
