"""``GET /budget`` (the caller's budgets and spend), ``GET /budgets/{user}`` and ``PUT
/budgets/{user}`` (an operator's: a token with the ``operator`` scope, else 403; 409
while budgets are off, AIECS_BUDGETS unset). See docs/budgets.md and
:mod:`aiecs_worker.store.budgets`.

A budget row: ``{"period": "day"|"month", "kind": "usd"|"tokens", "soft": x|null,
"hard": x|null, "spent": x, "reserved": x, "remaining": x|null, "resets_at": iso}``.
"""

from __future__ import annotations

import re

from aiecs_core import ID_PATTERN, Budget
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...store import budgets
from ...store.records import state_redis
from ..errors import BadRequest, Conflict, InvalidRequest, run_checked
from ..params import authenticate, operator, owned_body, validate

__all__ = ["ROUTES"]

#: Largest body of ``PUT /budgets/{user}``.
MAX_BODY = 16 * 1024


class BudgetsBody(BaseModel):
    """``PUT /budgets/{user}``: the user's budgets (``[]``: none at all), or ``null`` to go
    back to the default (AIECS_BUDGETS)."""

    model_config = ConfigDict(extra="forbid")

    budgets: list[Budget] | None = Field(max_length=4)


def _user(request: Request) -> str:
    raw = request.path_params["user_id"]
    if not re.fullmatch(ID_PATTERN, raw):
        raise BadRequest(f"invalid user id (must match {ID_PATTERN})")
    return raw


async def my_budget(request: Request) -> Response:
    user_id = authenticate(request)
    out = await run_checked(lambda: budgets.status(state_redis(), user_id))
    return JSONResponse(out)


async def user_budget(request: Request) -> Response:
    operator(request)
    user_id = _user(request)
    out = await run_checked(lambda: budgets.status(state_redis(), user_id))
    return JSONResponse(out)


async def set_user_budget(request: Request) -> Response:
    operator(request)
    user_id = _user(request)
    body = validate(BudgetsBody, await owned_body(request, MAX_BODY))

    def work() -> dict:
        try:
            budgets.set_budgets(state_redis(), user_id, body.budgets)
        except budgets.BudgetsOffError as exc:
            raise Conflict(str(exc), type_="budgets_off") from None
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return budgets.status(state_redis(), user_id)

    return JSONResponse(await run_checked(work))


ROUTES = [
    Route("/budget", my_budget, methods=["GET"]),
    Route("/budgets/{user_id}", user_budget, methods=["GET"]),
    Route("/budgets/{user_id}", set_user_budget, methods=["PUT"]),
]
