"""The framework floor of the benchmark (load_tests/benchmark.py): what FastAPI and uvicorn cost alone.

    python -m load_tests.floor --port 8001 [--workers 1]

One endpoint, ``POST /floor``, validates a small pydantic body shaped like a decision request and
answers a small JSON. It is served the way ``nba serve`` serves the API (app/cli.py ``_serve``): the
same ``uvicorn.run`` settings (an app factory, ``app.cli.SERVER_OPTIONS``, uvicorn's default loop and
HTTP implementations) and the same worker count,
so that what ``POST /v1/decide`` costs beyond it is the service's own work.
"""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from app.cli import SERVER_OPTIONS


class FloorIn(BaseModel):
    customer_id: str
    placement: str
    event: dict[str, Any] | None = None
    context: dict[str, Any] = {}


class FloorOut(BaseModel):
    customer_id: str
    placement: str
    fallback: bool


def create_app() -> FastAPI:
    app = FastAPI(title="nba benchmark floor")

    @app.post("/floor")
    async def floor(body: FloorIn) -> FloorOut:
        return FloorOut(customer_id=body.customer_id, placement=body.placement, fallback=False)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        "load_tests.floor:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
