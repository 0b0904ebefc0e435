"""The HTTP shell of ``glocalk serve``: FastAPI routes over ``glocalk.serve.service``.

FastAPI and pydantic are optional dependencies (``pip install 'glocalk[serve]'``), so they are
imported inside the functions that need them: importing glocalk never needs them (nor lets them
change global state). This module has no ``from __future__ import annotations``: the routes'
annotations name pydantic classes built at run time, and FastAPI reads them as objects.

Every error is JSON ``{"error": CODE, "message": TEXT}`` (validation errors add ``details``,
one entry per problem, each naming its place in the request) with a 4xx status.
"""

import json
from types import SimpleNamespace
from typing import Annotated, Any

from glocalk.errors import ConfigError, DataError, GlocalkError
from glocalk.serve import service
from glocalk.serve.service import Limits, ModelHolder, ServeError
from glocalk.version import __version__

DESCRIPTION = """GLocal-K recommendations over HTTP. Ids are the raw ids of the training file, as strings.
Ids absent from the training data follow the unknown-id policy (`glocalk serve --unknown`, default the model's
own): "error" answers 404 naming them, "baseline" answers with the user + item bias model.
Errors are JSON `{"error", "message"}` with a 4xx status."""


def schemas(limits: Limits) -> SimpleNamespace:
    """The request and response models, with the limits of ``limits`` in their constraints."""
    from pydantic import BaseModel, ConfigDict, Field

    Id = Annotated[str, Field(min_length=1, max_length=limits.max_id_length, description="a raw id, as a string")]

    class Request(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Pair(Request):
        user: Id
        item: Id

    class PredictRequest(Request):
        pairs: list[Pair] = Field(min_length=1, max_length=limits.max_pairs)

    class Prediction(BaseModel):
        user: str
        item: str
        rating: float

    class PredictResponse(BaseModel):
        predictions: list[Prediction]

    class Rating(Request):
        item: Id
        rating: float = Field(allow_inf_nan=False)

    class NewUserRequest(Request):
        ratings: list[Rating] = Field(min_length=1, max_length=limits.max_ratings)
        k: int = Field(10, ge=1, le=limits.max_k)

    class Recommendation(BaseModel):
        item: str
        score: float
        rank: int

    class RecommendationsResponse(BaseModel):
        items: list[Recommendation]

    class NewUserResponse(RecommendationsResponse):
        ignored: list[str] = Field(description="rated items the model does not know (unknown policy 'baseline')")

    class Error(BaseModel):
        error: str
        message: str
        details: list[dict] | None = None

    return SimpleNamespace(PredictRequest=PredictRequest, PredictResponse=PredictResponse,
                           NewUserRequest=NewUserRequest, RecommendationsResponse=RecommendationsResponse,
                           NewUserResponse=NewUserResponse,
                           Error=Error)


def build_app(holder: ModelHolder) -> Any:
    """The FastAPI application serving ``holder``'s current model (OpenAPI at /openapi.json, docs at /docs)."""
    from fastapi import FastAPI

    app = FastAPI(title="glocalk", version=__version__, description=DESCRIPTION)
    s = schemas(holder.limits)
    add_error_handlers(app)
    add_model_routes(app, holder, s)
    add_scoring_routes(app, holder, s)
    app.add_middleware(BodyLimit, max_bytes=holder.limits.max_body_bytes)
    return app


def error_response(status: int, code: str, message: str, details: list | None = None) -> Any:
    """The one JSON error shape."""
    from fastapi.responses import JSONResponse

    body: dict = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status)


def describe_validation(errors: list[dict], content_type: str = "application/json") -> tuple[str, list[dict]]:
    """pydantic's errors as one message naming each place ("body.pairs.0.user: Field required") and a
    JSON-safe list (the offending input is left out: it may be large or not JSON)."""
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
               for e in errors]
    parts = []
    for d in details[:5]:
        if d["type"] == "json_invalid":  # loc is ("body", offset)
            parts.append(f"the body is not valid JSON (at character {d['loc'][-1]})")
        else:
            parts.append(f"{'.'.join(d['loc'])}: {d['msg']}")
    if any(d["loc"] == ["body"] for d in details) and "json" not in content_type.lower():
        parts.append(f"send the body as JSON with the header Content-Type: application/json (got {content_type!r})")
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, details


def add_error_handlers(app: Any) -> None:
    """ServeError, validation errors and the router's 404/405 in the one JSON error shape."""
    from fastapi.exceptions import RequestValidationError

    async def refused(request: Any, exc: ServeError) -> Any:
        return error_response(exc.status, exc.code, exc.message)

    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        message, details = describe_validation(list(exc.errors()), request.headers.get("content-type", ""))
        return error_response(422, "invalid_request", message, details)

    async def no_route(request: Any, exc: Any) -> Any:
        return error_response(404, "not_found", f"no such endpoint: {request.method} {request.url.path} "
                                                "(the endpoints are listed at /docs)")

    async def bad_method(request: Any, exc: Any) -> Any:
        return error_response(405, "method_not_allowed", f"{request.url.path} does not accept {request.method} "
                                                         "(see /docs)")

    async def model_error(request: Any, exc: GlocalkError) -> Any:
        # What the service's own checks let through: bad input is the client's (422), a model that
        # scores NaN is the server's (500), each with the library's message.
        if isinstance(exc, (DataError, ConfigError)):
            return error_response(422, "invalid_request", str(exc))
        return error_response(500, "model_error", str(exc))

    app.add_exception_handler(ServeError, refused)
    app.add_exception_handler(GlocalkError, model_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(404, no_route)
    app.add_exception_handler(405, bad_method)


def add_model_routes(app: Any, holder: ModelHolder, s: SimpleNamespace) -> None:
    """GET /health and GET /metadata."""

    @app.get("/health", summary="liveness, and which model answers")
    def get_health() -> dict:
        return service.health(holder)

    @app.get("/metadata", summary="the served model: hyperparameters, fingerprint, metrics, versions")
    def get_metadata() -> dict:
        return service.metadata(holder.current, holder.limits)


def add_scoring_routes(app: Any, holder: ModelHolder, s: SimpleNamespace) -> None:
    """POST /predict, GET /users/{user_id}/recommendations and POST /recommendations."""
    from fastapi import Path, Query

    errors = {404: {"model": s.Error, "description": "an unknown id (the unknown-id policy served is 'error')"},
              422: {"model": s.Error, "description": "an invalid request; the message names the problem"}}
    limits = holder.limits
    UserId = Annotated[str, Path(min_length=1, max_length=limits.max_id_length, description="a raw user id")]

    @app.post("/predict", response_model=s.PredictResponse, responses=errors,
              summary=f"predicted ratings for up to {limits.max_pairs} (user, item) pairs")
    def post_predict(body: s.PredictRequest) -> Any:
        pairs = body.pairs
        found = service.predict(holder.current, [p.user for p in pairs], [p.item for p in pairs])
        return {"predictions": found}

    @app.get("/users/{user_id}/recommendations", response_model=s.RecommendationsResponse, responses=errors,
             summary="the top k items for a user of the training data")
    def get_recommendations(
            user_id: UserId,
            k: Annotated[int, Query(ge=1, le=limits.max_k, description="how many items")] = 10,
            exclude_seen: Annotated[bool, Query(description="leave out the items the user rated")] = True) -> Any:
        return {"items": service.recommend(holder.current, user_id, k, exclude_seen)}

    @app.post("/recommendations", response_model=s.NewUserResponse, responses=errors,
              summary="the top k items for a new user, from the ratings they gave (fold-in; nothing is stored)")
    def post_recommendations(body: s.NewUserRequest) -> Any:
        items = [r.item for r in body.ratings]
        ratings = [r.rating for r in body.ratings]
        return service.recommend_new(holder.current, items, ratings, body.k)


class BodyLimit:
    """ASGI middleware: a request whose Content-Length exceeds ``max_bytes`` is answered 413 unread."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers", ())).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(send, length)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Any, length: bytes) -> None:
        body = json.dumps({"error": "too_large", "message": f"the request body ({length.decode(errors='replace')} "
                                                           f"bytes) exceeds the limit of {self.max_bytes} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body.encode()})
