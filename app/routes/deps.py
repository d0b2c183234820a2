from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services import Services


def _services(request: Request) -> Services:
    services: Services = request.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
