"""`zoo serve`: a finished run behind an HTTP endpoint (FastAPI, uvicorn), requests batched together."""
