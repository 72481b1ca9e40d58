"""Log lines carry the request id; configured once per process, leaving uvicorn's own loggers alone."""

from __future__ import annotations

import logging

from service.middleware import request_id


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str = "INFO") -> None:
    logger = logging.getLogger("causerec")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.addFilter(_RequestId())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
