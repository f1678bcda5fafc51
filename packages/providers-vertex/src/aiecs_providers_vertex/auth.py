"""Google credentials for the Vertex services: application-default credentials, loaded
off the event loop, with every access token they obtain registered as a secret.

Blocking (credential files, the metadata server, token refreshes): call it in a thread.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiecs_core import ConfigurationError, register_secret

__all__ = ["CREDENTIALS_ENV", "SCOPES", "authorization", "load_credentials", "register_tokens"]

CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def register_tokens(credentials: Any) -> None:
    """Register every access token ``credentials`` obtain (the SDKs refresh them
    themselves, hourly) as a secret, so it is redacted wherever a server echoes it."""
    register_secret(getattr(credentials, "token", None))
    refresh = getattr(credentials, "refresh", None)
    if refresh is None:
        return

    def refresh_and_register(request: Any) -> None:
        refresh(request)
        register_secret(getattr(credentials, "token", None))

    with contextlib.suppress(AttributeError, TypeError):
        credentials.refresh = refresh_and_register


def load_credentials(provider: str) -> Any:
    """Application-default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's ADC
    file, or the metadata server), their tokens registered as secrets. Imports google-auth.

    Raises :class:`ConfigurationError` naming ``GOOGLE_APPLICATION_CREDENTIALS`` when
    there are none."""
    import google.auth
    import google.auth.exceptions

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ConfigurationError(
            f"{provider}: no Google credentials found: set {CREDENTIALS_ENV} to a "
            "service-account key file, or run 'gcloud auth application-default login' "
            f"({exc})",
            env_var=CREDENTIALS_ENV,
            provider=provider,
        ) from None
    register_tokens(credentials)
    return credentials


def authorization(credentials: Any) -> dict[str, str]:
    """The request headers ``credentials`` add (``Authorization: Bearer ...``), refreshing
    the token first when it is missing or about to expire. Blocking: run in a thread."""
    import google.auth.transport.requests

    headers: dict[str, str] = {}
    credentials.before_request(google.auth.transport.requests.Request(), "POST", "", headers)
    return headers
