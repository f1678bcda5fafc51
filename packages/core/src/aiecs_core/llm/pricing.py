"""Usage records, priced from configuration (``AIECS_PRICES``), never from invented prices."""

from __future__ import annotations

import hashlib
import json
import math
import os

from ..errors import ConfigurationError
from ..models import Usage

__all__ = ["PRICES_ENV", "make_usage", "price_for", "price_version"]

#: Environment variable with model prices: ``{"provider/model": {"input": USD per 1M
#: tokens, "output": USD per 1M tokens}}``. Models without an entry get ``cost=None``.
PRICES_ENV = "AIECS_PRICES"

_prices_cache: tuple[str, dict[str, tuple[float, float]]] | None = None


def _prices() -> dict[str, tuple[float, float]]:
    global _prices_cache
    raw = os.environ.get(PRICES_ENV, "").strip()
    if _prices_cache is not None and _prices_cache[0] == raw:
        return _prices_cache[1]
    table: dict[str, tuple[float, float]] = {}
    if raw:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("must be a JSON object")
            for key, entry in data.items():
                if "/" not in key or not isinstance(entry, dict):
                    raise ValueError(f"entry {key!r} must be 'provider/model': {{...}}")
                unknown = set(entry) - {"input", "output"}
                if unknown:
                    raise ValueError(f"entry {key!r} has unknown fields {sorted(unknown)}")
                prices = (float(entry.get("input", 0.0)), float(entry.get("output", 0.0)))
                if min(prices) < 0 or not all(math.isfinite(p) for p in prices):
                    raise ValueError(f"entry {key!r} must have finite, non-negative prices")
                table[key] = prices
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{PRICES_ENV} is invalid: {exc} (expected "
                '{"provider/model": {"input": <USD per 1M tokens>, "output": <...>}})',
                env_var=PRICES_ENV,
            ) from None
    _prices_cache = (raw, table)
    return table


def price_for(provider: str, *models: str | None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for the first of ``models`` with a price."""
    table = _prices()
    for model in models:
        if model and f"{provider}/{model}" in table:
            return table[f"{provider}/{model}"]
    return None


def price_version() -> str | None:
    """A short hash of ``AIECS_PRICES`` as this process reads it (None when unset): the
    history records it beside each cost, so costs priced by different tables tell apart."""
    raw = os.environ.get(PRICES_ENV, "").strip()
    if not raw:
        return None
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def make_usage(
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    requested_model: str | None = None,
    estimated: bool = False,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> Usage:
    """A Usage record, priced when ``AIECS_PRICES`` has the model (reported or requested).

    ``estimated`` usage (counted locally because the provider never reported it, e.g. a
    cancelled stream) is never priced, and says so (``Usage.estimated``).
    """
    cost = None
    price = None if estimated else price_for(provider, model, requested_model)
    if price is not None:
        cost = round((input_tokens * price[0] + output_tokens * price[1]) / 1_000_000, 10)
    return Usage(
        provider=provider,
        model=model,
        input_tokens=max(0, int(input_tokens)),
        output_tokens=max(0, int(output_tokens)),
        cached_tokens=max(0, int(cached_tokens or 0)),
        reasoning_tokens=max(0, int(reasoning_tokens or 0)),
        cost=cost,
        estimated=estimated,
    )
