"""Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to retry unsafely.

torch's refusal says what it found (``Trying to load unsupported GLOBAL posix.system ...``) and
also advises re-running with ``weights_only=False``: the route that runs whatever code the file
holds, and a file we refuse is exactly the one not to trust. Every loader of ours (our model
checkpoints, the released PDD decoder) reports the finding alone, through :func:`refusal_reason`.
"""

from __future__ import annotations

import pickle

__all__ = ["refusal_reason"]

_ADVICE_WORDS = (
    "weights_only",
    "documentation",
    "trusted source",
    "Weights only load failed",
)


def refusal_reason(exc: pickle.UnpicklingError) -> str:
    """The first sentence of the refusal that is a finding, not advice; the error's type name
    when torch said nothing else."""
    text = str(exc)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    paragraphs = [rest] if marker else text.split("\n\n")
    for paragraph in paragraphs:
        sentence = " ".join(paragraph.split()).split(". ")[0].strip().rstrip(".")
        if sentence and not any(word in sentence for word in _ADVICE_WORDS):
            return sentence
    return type(exc).__name__
