"""The demo origin that `make run`, docker-compose, the tests and the load tester call: standard library only."""

from demo_origin.server import OriginServer, OriginState, main

__all__ = ["OriginServer", "OriginState", "main"]
