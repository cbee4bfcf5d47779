"""Loaders: each source format is mapped onto one canonical tensor set.

Canonical = Hugging Face LLaMA names and layouts (``model.layers.{i}.self_attn.q_proj.weight``
…, q/k rows in HF's rotate-half order), plus a config dict with the keys the native
decoder takes. Everything after the loaders sees only that.
"""

from linly_engine.formats.checkpoint import Checkpoint, Tensor  # noqa: F401
