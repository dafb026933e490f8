"""The bundled benchmark: what each asgi_perf middleware, and the whole stack, adds to a request.

Run ``python -m benchmarks --help``. Modules: :mod:`.driver` (the
in-process ASGI driver), :mod:`.scenarios` (what is measured), :mod:`.inprocess` (interleaved
rounds), :mod:`.http` and :mod:`.server` (real server in a subprocess + load generator),
:mod:`.goals` (the performance goals), :mod:`.report` (tables, JSON, chart).
"""

__all__: list[str] = []
