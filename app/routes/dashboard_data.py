"""``GET /v1/admin/dashboard/data``: the last 15 minutes of the service's metrics, one sample every 10 s,
for the live dashboard (app/dashboard_data.py; the sample's shape is in docs/metrics.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app import dashboard_data
from app.auth import require
from app.errors import documented
from app.routes.deps import ServicesDep
from app.settings import Scope

router = APIRouter(
    prefix="/v1/admin/dashboard", tags=["operations"], dependencies=[Depends(require(Scope.ADMIN))]
)


@router.get("/data", responses=documented(401, 403, 503), summary="The dashboard's samples, last 15 minutes")
async def get_dashboard_data(services: ServicesDep) -> dict[str, Any]:
    """``{"interval_s": 10, "samples": [...]}``, oldest first: cumulative counts; rates come from deltas."""
    return await dashboard_data.recent(services)
