"""``GET /v1/reports/uplift``: treatment against control (models/uplift.py, docs/uplift.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.auth import require
from app.errors import InvalidInput, documented
from app.routes.deps import ServicesDep
from app.settings import Scope
from feature_store.evaluation import EvaluationStore
from models import uplift
from models.evaluate import iso_s

router = APIRouter(prefix="/v1/reports", tags=["reports"], dependencies=[Depends(require(Scope.ADMIN))])

From = Annotated[
    datetime | None,
    Query(
        alias="from",
        description="Decisions made from this time (RFC 3339; no offset means UTC). "
        "Default: 7 days before `to`.",
    ),
]
To = Annotated[
    datetime | None,
    Query(alias="to", description="Decisions made before this time (RFC 3339). Default: now."),
]


def _ms(when: datetime | None) -> int | None:
    if when is None:
        return None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


@router.get(
    "/uplift", responses=documented(401, 403, 422, 503), summary="Incrementality: treatment against control"
)
async def get_uplift(services: ServicesDep, since: From = None, until: To = None) -> dict[str, Any]:
    """Per action, per placement and overall: customers, conversions, conversion rate and revenue per
    customer in treatment and control, with absolute and relative lift, 95% intervals and p-values, and
    a warning where a sample is too small to conclude. In `holdouts`, the same for each action with a
    holdout of its own: treatment customers served it against treatment customers held out of it who
    would have been served it (`control` there is that held-out side). docs/uplift.md says how each
    figure is made."""
    now_ms = int(services.clock() * 1000)
    since_ms, until_ms = uplift.default_range(_ms(since), _ms(until), now_ms)
    if since_ms >= until_ms:
        raise InvalidInput(
            f"'from' ({iso_s(since_ms)}) must be before 'to' ({iso_s(until_ms)})",
            fields=[{"field": "query.from", "problem": "must be before to"}],
        )
    store = EvaluationStore.of(services.store)
    found = await uplift.report(
        store, services.catalogues.live, since_ms=since_ms, until_ms=until_ms, now_ms=now_ms
    )
    return found.to_dict()
