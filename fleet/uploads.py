"""Upload handling that never buffers a large body in memory (docs/reliability.md O2)."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Streams file parts to a temp file and stops as soon as the limit is passed.

    The middleware refuses a declared Content-Length over the limit before any
    byte is read; this handler covers chunked bodies that declare nothing.
    """

    def __init__(self, request=None):
        super().__init__(request)
        self.received = 0
        self.limit = settings.EDGEFLEET_MAX_UPLOAD_BYTES

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            if self.request is not None:
                self.request.upload_too_large = True
            self.file.close()
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)
