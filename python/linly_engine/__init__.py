"""linly-engine: fast inference for LLaMA-family models, Chinese ones first.

The native core (``linly_engine._C``) holds the quantised CPU kernels; this package
re-exports the parts meant for users.
"""

from __future__ import annotations

from linly_engine._C import (  # noqa: F401  (re-exported API)
    LlamaModel,
    PackedMatrix,
    available_isas,
    cpu_info,
    dequantize,
    format_info,
    formats,
    get_num_threads,
    measure_read_bandwidth,
    quantize,
    row_bytes,
    set_num_threads,
)

from linly_engine import cuda  # noqa: E402,F401  (linly_engine.cuda)
from linly_engine.engine import ContextOverflowError, Engine, GenerationStats  # noqa: E402
from linly_engine.model import Model  # noqa: E402
from linly_engine.sampling import SamplingParams  # noqa: E402
from linly_engine.templates import ChatTemplate  # noqa: E402
from linly_engine.tokenizer import Tokenizer, TokenizerError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ChatTemplate",
    "ContextOverflowError",
    "Engine",
    "GenerationStats",
    "LlamaModel",
    "Model",
    "PackedMatrix",
    "available_isas",
    "cpu_info",
    "cuda",
    "dequantize",
    "format_info",
    "formats",
    "get_num_threads",
    "measure_read_bandwidth",
    "quantize",
    "row_bytes",
    "SamplingParams",
    "Tokenizer",
    "TokenizerError",
    "set_num_threads",
]
