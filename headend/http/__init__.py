"""The head-end's HTTP API (issue 16): the operator API under ``/api/v1`` and the
third-party portal under ``/portal/v1``. `headend.http.app.build` makes the FastAPI app;
``headend api`` serves it (HTTPS by default)."""
