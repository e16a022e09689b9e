"""The HTTP gateway: OpenAI-compatible and chat.petals.dev-compatible APIs over a SwarmClient.

``create_app(settings, client)`` (client/gateway/app.py) builds the FastAPI app; the routers live
in openai_api.py and petals_api.py, auth and rate limits in auth.py, metrics in metrics.py.
"""
