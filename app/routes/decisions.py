from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.auth import require
from app.errors import documented
from app.routes.deps import ServicesDep
from app.schemas import DecideIn, DecideOut, OutcomesAccepted, OutcomesBody
from app.settings import Scope

router = APIRouter(prefix="/v1", tags=["decisions"], dependencies=[Depends(require(Scope.WEB))])


@router.post(
    "/decide",
    response_model=DecideOut,
    responses=documented(401, 403, 413, 415, 422),
    summary="Choose what to show one customer at one placement now",
)
async def post_decide(body: DecideIn, services: ServicesDep) -> Any:
    """Within the decision budget, or the placement's fallback with ``fallback: true``."""
    return JSONResponse(await services.decide(body))


@router.post(
    "/outcomes",
    status_code=202,
    responses=documented(401, 403, 404, 413, 415, 422, 503),
    summary="Report what became of a decision: impression, click, dismiss, conversion",
)
async def post_outcomes(body: OutcomesBody, services: ServicesDep) -> OutcomesAccepted:
    """One outcome (404 for an unknown decision), or ``{"outcomes": [...]}`` with per-item errors."""
    return await services.outcomes(body)


@router.get("/actions", summary="The catalogue as loaded")
async def get_actions(services: ServicesDep) -> dict[str, Any]:
    return services.catalogues.live.public()
