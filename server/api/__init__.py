"""The server's HTTP API: one module per concern, each with `setup(app, server)` adding its routes."""
