"""The OpenAI endpoints without HTTP: the protocol models (`protocol`), the serving logic that turns a
request into typed engine calls and a typed response (`serving`), and the offline runner a batch flow
run executes its lines with (`offline`). The gateway's thin router (api/openai/router.py) and the batch
flow both use it; it imports nothing from `api/` or `flows/` (the gateway hands its services in)."""
