"""Thin adapters that put the engine behind the gateways people already run.

* :mod:`~sluicegate.integrations.rls`: Envoy gRPC RateLimitService v3 (``sluicegate rls``).
* :mod:`~sluicegate.integrations.decide_api`: HTTP decision API (``POST /v1/decide``).
* :mod:`~sluicegate.integrations.aws_lambda`: AWS API Gateway Lambda REQUEST authorizer.
* :mod:`~sluicegate.integrations.asgi`: ``RateLimitMiddleware`` for Starlette / FastAPI apps.

Each module imports its own framework (grpcio, starlette); the engine imports none of them.
Everything shared (refusal bodies, shadow reporting, store-failure detection) is in
:mod:`~sluicegate.integrations.common`.
"""
