"""The factory in a browser: one FastAPI app with the guarded OpenAI-compatible endpoint
(:mod:`webapp.api`), the app and its settings (:mod:`webapp.server`), the bearer token that guards it off
loopback (:mod:`webapp.auth`) and, when Gradio is installed, the web UI (``webapp.ui``) mounted at ``/``.

Layering: ``flows`` (the CLI) imports this package; it imports ``tasks``, ``warehouse`` and ``runtime``."""
