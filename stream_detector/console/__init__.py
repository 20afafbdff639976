"""The operator console: ``stream-detector console`` serves a JSON API and one static page.

Views: live traffic (rates, score histogram with the threshold, alert rate, workers), threshold
what-if (alerts/hour, precision/recall and ROC/PR from analyst labels; apply with a token), explain
one event (score, verdict, per-field errors) and the model registry (rollback with a token).
The HTTP layer (server.py) is a FastAPI app served by uvicorn. See docs/console.md.
"""

from .server import ConsoleServer, serve

__all__ = ["ConsoleServer", "serve"]
