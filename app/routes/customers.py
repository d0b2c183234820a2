from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.convertors import PathConvertor, register_url_convertor

from app.auth import require
from app.errors import documented
from app.routes.deps import ServicesDep
from app.schemas import ProfileOut, printable
from app.settings import Scope
from feature_store import IdKind


class _AnyId(PathConvertor):
    """Like ``path`` (ids may hold slashes) but matching line breaks too, so that such an id gets the
    422 that names the field rather than a routing 404."""

    regex = r"[\s\S]+"


register_url_convertor("customer_id", _AnyId())

router = APIRouter(prefix="/v1/customers", tags=["customers"], dependencies=[Depends(require(Scope.ADMIN))])
CustomerId = Annotated[str, Path(min_length=1, max_length=128), AfterValidator(printable)]
IdType = Annotated[
    Literal["customer", "anonymous"],
    Query(description="What the id is; an anonymous id that was linked leads to its customer."),
]
_KINDS = {"customer": IdKind.CUSTOMER, "anonymous": IdKind.ANONYMOUS}
_ERRORS = documented(401, 403, 404, 503)


@router.get(
    "/{customer_id:customer_id}", response_model=ProfileOut, responses=_ERRORS, summary="The live profile"
)
async def get_customer(customer_id: CustomerId, services: ServicesDep, id_type: IdType = "customer") -> Any:
    # Built as plain JSON by the service; the response model documents it without re-validating it.
    return JSONResponse(await services.profile(customer_id, _KINDS[id_type]))


@router.delete(
    "/{customer_id:customer_id}",
    status_code=204,
    responses=_ERRORS,
    summary="Erase everything about a customer",
)
async def delete_customer(
    customer_id: CustomerId, services: ServicesDep, id_type: IdType = "customer"
) -> Response:
    await services.erase(customer_id, _KINDS[id_type])
    return Response(status_code=204)
