from __future__ import annotations

from fastapi import APIRouter, Depends

from app.auth import require
from app.errors import documented
from app.routes.deps import ServicesDep
from app.schemas import EventsAccepted, EventsBody, IdentityIn, IdentityLinked
from app.settings import Scope

router = APIRouter(prefix="/v1", tags=["events"])
_ERRORS = documented(401, 403, 413, 415, 422, 503)


@router.post(
    "/events",
    status_code=202,
    dependencies=[Depends(require(Scope.WEB))],
    responses=_ERRORS,
    summary="Ingest one event, or a batch of up to 1000",
)
async def post_events(body: EventsBody, services: ServicesDep) -> EventsAccepted:
    """Apply events to their customers' profiles. A 202 means they are in the store."""
    return await services.ingest(body)


@router.post(
    "/identities",
    dependencies=[Depends(require(Scope.SERVER))],
    responses={**_ERRORS, **documented(409)},
    summary="Link an anonymous visitor to a known customer",
)
async def post_identities(body: IdentityIn, services: ServicesDep) -> IdentityLinked:
    """Merge the visitor's history into the customer's profile; later events under either id land there."""
    return await services.link(body)
