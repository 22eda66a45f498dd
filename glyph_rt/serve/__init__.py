"""Serving: a continuous-batching engine on GlyphModel, an OpenAI-compatible HTTP server, the Batch API runner
and a backend forwarding rendered pages to OpenAI-compatible (vLLM) servers.

    engine = Engine(GlyphModel.from_pretrained(path))       # serve.engine
    app = build_app(engine)                                  # serve.app (FastAPI)
"""
