"""The operator's error kinds (kopf's, without importing kopf here: handlers.py maps them), and the API server's.

An error the operator can name is written to the status first, then raised as one of these: a permanent one
stops the retries until the FineTuneJob changes, a temporary one retries after a delay. Anything else is a bug
or an outage, and kopf's backoff retries it.
"""
import json

from urllib3.exceptions import HTTPError

TRANSIENT_DELAY_SECONDS = 5.0


class ApiError(Exception):
    """The API server answered with an error: `status` (HTTP), `reason` and `body` (its Status object)."""

    def __init__(self, status: int, reason: str = "", body: str | None = None, retry_after: float | None = None):
        super().__init__(f"{status} {reason}: {body or ''}"[:2000])
        self.status, self.reason, self.body = status, reason, body
        self.retry_after = retry_after
        """Seconds the API server asked us to wait (Retry-After), when it said."""


class PermanentFailure(Exception):
    """Retrying cannot help until the spec changes (an invalid spec, a child the API server calls invalid)."""


class RetryLater(Exception):
    def __init__(self, message: str, delay: float = TRANSIENT_DELAY_SECONDS):
        super().__init__(message)
        self.delay = delay


def api_message(exc: ApiError) -> str:
    """The API server's own message (it names the field, the quota or the missing object)."""
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or str(exc.status)
    except (ValueError, AttributeError):
        return str(exc.reason or exc.status)


def is_transient(exc: BaseException) -> bool:
    """Overload, timeouts, a restarting API server, a conflict with a concurrent change (409: an object deleted
    or replaced in between): the same request, or the next reconcile, may well succeed in a moment."""
    if isinstance(exc, ApiError):
        return exc.status in (0, 408, 409, 429) or exc.status >= 500
    return isinstance(exc, (HTTPError, OSError))
