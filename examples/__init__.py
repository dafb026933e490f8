"""Runnable example apps: Starlette, FastAPI and Litestar, each with the full asgi-perf stack."""
