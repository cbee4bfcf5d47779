"""The HTTP service: an OpenAI-compatible API over a continuous-batching scheduler."""

from linly_engine.serve.app import ServerConfig, create_app, serve
from linly_engine.serve.scheduler import QueueFullError, Request, Scheduler

__all__ = ["QueueFullError", "Request", "Scheduler", "ServerConfig", "create_app", "serve"]
