"""The FastAPI gateway: auth, routing, async jobs; no torch in this process."""
