"""Serving: settings, HTTP schemas, the served-model registry, batching across requests, telemetry, request
context, routes, the app factory and the ``serve`` and ``predict`` commands. It builds on :mod:`mcdrop.core` and
reads checkpoints; it never imports :mod:`mcdrop.training`."""
