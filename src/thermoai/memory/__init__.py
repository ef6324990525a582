"""Extended Mind Transformers: retrieval of pre-computed key/value memories inside attention.

Quick start::

    from thermoai.memory import load_model, MemoryBank, attach

    model, tokenizer = load_model()                      # embedded SmolLM2-135M-Instruct, offline
    bank = MemoryBank.build(model, tokenizer, text=document)
    bank.save("doc.bank.safetensors")
    with attach(model, bank, topk=10, record=True) as mind:
        out = model.generate(**tokenizer(question, return_tensors="pt"), max_new_tokens=30)
        spans = mind.citations()

Needs the ``memory`` extra (transformers, gguf, accelerate). See docs/memory.md.
"""

from thermoai.memory.attention import POSITION_MODES, ExtendedMind, attach, canonical_position_mode
from thermoai.memory.bank import MemoryBank
from thermoai.memory.citations import Citation, answer_citations, cite, memory_weights, sink_memories
from thermoai.memory.confidence import confidence
from thermoai.memory.diagnostics import RetrievalDiagnostic, diagnose, find_span, span_memories
from thermoai.memory.model import AdaptiveGeneration, generate_adaptive, load_model, suspended

__all__ = [
    "AdaptiveGeneration",
    "Citation",
    "RetrievalDiagnostic",
    "answer_citations",
    "confidence",
    "diagnose",
    "find_span",
    "span_memories",
    "ExtendedMind",
    "MemoryBank",
    "POSITION_MODES",
    "attach",
    "canonical_position_mode",
    "cite",
    "generate_adaptive",
    "load_model",
    "memory_weights",
    "sink_memories",
    "suspended",
]
