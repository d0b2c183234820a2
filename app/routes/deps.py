from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services import Services


async def _services(request: Request) -> Services:
    # async: a plain function would be run in the thread pool, a thread hand-off on every request.
    services: Services = request.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
