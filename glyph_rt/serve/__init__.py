"""Serving: a continuous-batching engine on GlyphModel with a document cache (engine, doc_cache), chat messages
to prompts (inputs), the OpenAI-compatible HTTP server (protocol, app, metrics), the Batch API runner (batch) and
a backend forwarding rendered pages to OpenAI-compatible (vLLM) servers (forward).

    service = ChatService.from_config(ServeConfig(model="path/to/Glyph"))     # serve.service: model + engine
    app = build_app(service, api_key="...")                                    # serve.app: FastAPI
"""
