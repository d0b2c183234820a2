"""``GET /metrics``: Prometheus exposition (docs/metrics.md). Open, unless ``NBA_METRICS_KEY`` is set:
then it needs ``Authorization: Bearer <that key>`` (an ``admin`` API key also does), as Prometheus's
``authorization`` scrape setting sends it."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import APIRouter, Depends, Request, Response

from app import metrics
from app.errors import ApiError, Unauthorized, documented
from app.routes.deps import ServicesDep
from app.settings import Scope

router = APIRouter(tags=["operations"])


async def _metrics_key(request: Request, services: ServicesDep) -> None:
    key = services.settings.metrics_key
    if key is None:
        return
    authorization = request.headers.get("authorization") or ""
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        hashlib.sha256(presented.strip().encode()).digest(),
        hashlib.sha256(key.get_secret_value().encode()).digest(),
    ):
        return
    if not services.keys.open:  # with API keys, an admin key opens it too
        try:
            services.keys.check(authorization, Scope.ADMIN)
        except ApiError:
            pass
        else:
            return
    raise Unauthorized("send NBA_METRICS_KEY as 'Authorization: Bearer <key>'")


@router.get(
    "/metrics",
    dependencies=[Depends(_metrics_key)],
    responses={**documented(401), 200: {"content": {metrics.CONTENT_TYPE: {}}}},
    summary="Prometheus metrics",
)
async def get_metrics(services: ServicesDep) -> Response:
    """Counters and histograms summed over every worker process; backlogs read from Redis now."""
    return Response(await metrics.exposition(services), media_type=metrics.CONTENT_TYPE)
