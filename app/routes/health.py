from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.routes.deps import ServicesDep
from feature_store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process is alive")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="Ready to serve: store reachable, catalogue and models loaded")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """200 when the store answers a PING, a catalogue is live (always, once started) and the models were
    loaded from the store at least once since start (the catalogue's priors when none was published);
    else 503 naming what is missing."""
    problems = []
    try:
        await services.ready()
    except StoreUnavailable as exc:
        problems.append(f"store: {exc}")
    # With watch=False (tests, simulations) whoever holds the models loads them: nothing to wait for here.
    if request.state.models_followed and not services.models.loaded:
        problems.append("models: not loaded from the store yet")
    if problems:
        return JSONResponse({"error": "not_ready", "detail": "; ".join(problems)}, status_code=503)
    checks = {
        "store": "ok",
        "catalogue": services.catalogues.live.version,
        "models": services.models.scorer.version,
    }
    return JSONResponse({"status": "ready", "checks": checks})
