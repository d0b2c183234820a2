from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.routes.deps import ServicesDep
from feature_store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process is alive")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="Ready to serve: the store answers")
async def readyz(services: ServicesDep) -> JSONResponse:
    try:
        await services.ready()
    except StoreUnavailable as exc:
        return JSONResponse({"error": "not_ready", "detail": f"store: {exc}"}, status_code=503)
    return JSONResponse({"status": "ready", "checks": {"store": "ok"}})
