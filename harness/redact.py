"""Credentials out of everything recorded or printed: a URI may carry them, and runs record their URIs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

# Query keys that carry credentials in a filesystem URI (pyarrow's S3 and GCS options, and the usual spellings).
SECRET_KEYS = ("access_key", "secret_key", "session_token", "access_token", "token", "password", "secret",
               "credentials", "sas_token", "account_key")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/?#\s]*)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:" + "|".join(SECRET_KEYS) + r"))=[^&#\s]*", re.IGNORECASE)


def redact(text: str | Path) -> str:
    """`text` as it may be recorded or printed: credentials of every URI in it (user:secret@, ?secret_key=...)
    replaced by ***.

    A URI may carry an access key and secret (s3://KEY:SECRET@bucket/x, ?access_key=...&secret_key=...);
    they never reach a run record, MLflow, the sweep state or a message.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}=***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's message (with its args) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True
