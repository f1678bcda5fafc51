"""Whether an optional module is installed, for tests of optional extras."""

from __future__ import annotations

import importlib.util


def installed(module: str) -> bool:
    """True when ``module`` can be imported; False also when a parent package is missing
    (``find_spec("google.cloud.aiplatform")`` raises when there is no ``google.cloud``)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
