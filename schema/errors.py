"""One typed error tree for the whole product.

Each error knows its HTTP status and CLI exit code, so the edges (FastAPI handlers, the CLI) map
errors in one place and the core never formats a response itself. Messages are one line that says
what is wrong and what to do; they never contain secrets.
"""

from __future__ import annotations


class AccuteError(Exception):
    """Base of every error the product raises on purpose."""

    code: str = "error"
    http_status: int = 500
    exit_code: int = 1
    #: Extra HTTP response headers (a challenge, Retry-After); None for most errors.
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInputError(AccuteError):
    """The caller gave a value we cannot use."""

    code = "invalid_input"
    http_status = 422
    exit_code = 2


class ConfigurationError(AccuteError):
    """A setting (environment variable, config file) is wrong."""

    code = "configuration_error"
    http_status = 500
    exit_code = 2


class NotFoundError(AccuteError):
    """The named record does not exist (or is not visible to this tenant)."""

    code = "not_found"
    http_status = 404
    exit_code = 3


class ConflictError(AccuteError):
    """The change would break a uniqueness rule or the current state forbids it."""

    code = "conflict"
    http_status = 409
    exit_code = 4


class DatabaseUnavailableError(AccuteError):
    """The database cannot be reached or is not migrated."""

    code = "database_unavailable"
    http_status = 503
    exit_code = 5


class SchemaNotReadyError(DatabaseUnavailableError):
    """The database is reachable but its schema is missing or behind the code."""

    code = "schema_not_ready"


class AuthenticationError(AccuteError):
    """No valid credentials were presented."""

    code = "unauthenticated"
    http_status = 401
    exit_code = 6


class ChallengeRequiredError(AuthenticationError):
    """The token is valid but the zero-trust policy wants more proof (a second factor, ...)."""

    code = "challenge_required"

    def __init__(self, challenge: str) -> None:
        super().__init__(f"complete the {challenge} challenge and retry")
        self.challenge = challenge
        self.headers = {
            "WWW-Authenticate": f'Bearer error="insufficient_user_authentication", challenge="{challenge}"'
        }


class ChallengeFailedError(ChallengeRequiredError):
    """The request answered the challenge with a wrong, expired or already used code (counted
    toward ``credential_stuffing`` for the client address, like a bad token)."""

    code = "challenge_failed"

    def __init__(self, challenge: str) -> None:
        super().__init__(challenge)
        self.message = (
            f"the {challenge} challenge response was wrong, expired or already used; "
            "retry with a fresh code in X-Accute-Challenge-Response"
        )
        self.args = (self.message,)


class RateLimitedError(AccuteError):
    """Too many requests from one organization or address; retry after the header's seconds."""

    code = "rate_limited"
    http_status = 429
    exit_code = 7

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": retry_after}


class PermissionDeniedError(AccuteError):
    """The credentials are valid but do not allow this action."""

    code = "forbidden"
    http_status = 403
    exit_code = 6


class ConsentChangedError(ConflictError):
    """The consent snapshot a contribution was trained on is no longer current (consent gate)."""

    code = "rejected_consent_changed"


class BudgetExceededError(ConflictError):
    """Charging this DP event would push a tenant's epsilon over its cap; nothing was charged."""

    code = "budget_exceeded"


class NothingTrainedError(AccuteError):
    """A run finished without a single accepted contribution: its model is the initial one."""

    code = "nothing_trained"
    http_status = 409
    exit_code = 9


class UpstreamUnavailableError(AccuteError):
    """Every tier of the inference cascade failed (tenant providers, VAMN, fallback)."""

    code = "upstream_unavailable"
    http_status = 502
    exit_code = 7


class DeadlineExceededError(UpstreamUnavailableError):
    """The cascade's overall deadline passed before any tier answered."""

    code = "deadline_exceeded"
    http_status = 504
