"""Credentials out of everything recorded or printed: a URI may carry them, and runs record their URIs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

# A query key that carries credentials ends in one of these (pyarrow's access_key, secret_key and session_token,
# GCS access_token, Azure's account_key and sig, a presigned URL's X-Amz-Credential and X-Amz-Signature, ...).
SECRET_KEY_ENDINGS = ("key", "token", "secret", "password", "passwd", "credential", "credentials", "signature", "sig")
# A scheme starts where a run of scheme characters does (so a search scans each run once, never quadratically).
_SCHEME = r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://"
# A URI runs from its scheme to a space, a quote or bracket that encloses it, or the next URI's scheme.
_URI = re.compile(rf"(?P<scheme>{_SCHEME})(?P<rest>(?:(?!{_SCHEME})[^\s'\"<>`])*)")
_SECRET_QUERY = re.compile(rf"(?P<key>[?&][^=&#\s'\"<>`]*(?:{'|'.join(SECRET_KEY_ENDINGS)}))=[^&#\s'\"<>`]*",
                           re.IGNORECASE)


def redact(text: str | Path) -> str:
    """`text` as it may be recorded or printed: credentials of every URI in it (user:secret@, ?secret_key=...)
    replaced by ***.

    A URI may carry an access key and secret (s3://KEY:SECRET@bucket/x, ?access_key=...&secret_key=...);
    they never reach a run record, MLflow, the sweep state or a message.
    """
    text = _URI.sub(lambda m: m["scheme"] + _without_userinfo(m["rest"]), str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}=***", text)


def _without_userinfo(rest: str) -> str:
    """A URI after its `scheme://` with its userinfo replaced by ***.

    Secrets are often pasted unencoded (an AWS secret key holds '/' and '+'), so the userinfo runs to the
    LAST '@' of the URI and may hold '/', ':', '@', '?' and '#': what comes before that '@' is userinfo when
    it holds none of '/?#' (the standard form) or a ':' comes before the first of them (KEY:SE/CRET). A path
    or query that merely holds an '@' (s3://bucket/name@v2) stays; one behind credentials is redacted with
    them (host:port/a@b is taken for credentials too): a secret is never shown to keep a path.
    """
    userinfo, at, after = rest.rpartition("@")
    if not at or (re.search(r"[/?#]", userinfo) and ":" not in re.split(r"[/?#]", userinfo, maxsplit=1)[0]):
        return rest
    return f"***@{after}"


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's message (with its args) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True
