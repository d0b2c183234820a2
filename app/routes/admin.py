from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.auth import require
from app.errors import InvalidInput, documented
from app.routes.deps import ServicesDep
from app.settings import Scope
from policies.catalogue import CatalogueInvalid

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require(Scope.ADMIN))])


@router.post("/reload", responses=documented(401, 403, 422, 503), summary="Reload the catalogue")
async def post_reload(services: ServicesDep) -> dict[str, Any]:
    """Load the catalogue files again. An invalid one answers 422 with every problem; the live one stays."""
    try:
        catalogue = services.catalogues.reload()
    except CatalogueInvalid as exc:
        raise InvalidInput(
            f"the catalogue has {len(exc.problems)} problem(s); the live catalogue "
            f"{services.catalogues.live.version} stays",
            code="invalid_catalogue",
            fields=[{"field": f"{p.file}: {p.where}", "problem": p.problem} for p in exc.problems],
        ) from exc
    return {
        "version": catalogue.version,
        "placements": len(catalogue.placements),
        "actions": len(catalogue.actions),
        "announced": await services.catalogues.tell_others(services.store),
    }


models_router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require(Scope.ADMIN))])


@models_router.get("/models", responses=documented(401, 403), summary="What each action's model has learned")
async def get_models(services: ServicesDep) -> dict[str, Any]:
    """Per action: observations, rewards, maturity and last update; the snapshot's version and age."""
    return await services.model_report()
