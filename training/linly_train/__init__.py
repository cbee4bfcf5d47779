"""linly_train: Linly's recipe for Chinese LLaMA models as a package.

Data (pretraining documents and parallel pairs, instructions) → token files; vocabulary
extension; full-parameter training with DeepSpeed ZeRO-3 (gloo on a CPU, NCCL on GPUs);
export of the result into the engine's packed file. The engine's tokenizer and chat
template code is used for the data, so training and inference agree token for token.
"""

__version__ = "0.1.0"
