"""``POST /dev/token`` ``{"user_id", "ttl"?, "operator"?}``: a token for any user, mounted in
development mode only (``aiecs dev``, ``aiecs serve --dev``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..bodies import DevTokenBody
from ..errors import InvalidRequest
from ..params import read_json, validate
from ..tokens import OPERATOR_SCOPE, issue_token

__all__ = ["ROUTES"]


async def dev_token(request: Request) -> Response:
    data = validate(DevTokenBody, await read_json(request, 4096))
    s = request.app.state
    ttl = data.ttl or s.token_ttl
    if ttl > s.token_max_lifetime:
        raise InvalidRequest(f"ttl: longer than AIECS_TOKEN_MAX_LIFETIME "
                             f"({s.token_max_lifetime} s)")
    token = issue_token(data.user_id, s.secret, ttl,
                        scopes=(OPERATOR_SCOPE,) if data.operator else ())
    return JSONResponse({"user_id": data.user_id, "token": token, "ttl": ttl})


ROUTES = [Route("/dev/token", dev_token, methods=["POST"])]
