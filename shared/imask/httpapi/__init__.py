"""mask-api's HTTP API: request handling (handling.py), the FastAPI app (app.py), its listener (server.py)."""
