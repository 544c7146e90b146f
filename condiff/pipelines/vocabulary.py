"""The words a model was trained on, and the one-line warning for a prompt that names none of them.

A model condiff trains records the words of its training captions in pipeline.json (`vocabulary`): the shapes
world's grammar, or every word of an image folder's or shards' captions, joined with its base model's when it was
fine-tuned. A frozen pretrained encoder reads any English, but the model draws only what its captions showed it:
"a photo of a dog" on the shapes-world default comes out as coloured shapes, and nothing said so. Now the command
line and the API say it, in one line, and draw anyway (a warning, not an error). A model that records no
vocabulary (Stable Diffusion, whose captions are the web's) is never warned about.
"""
from __future__ import annotations

import re
from typing import Iterable

from .lexicon import read_colours, read_note

FUNCTION_WORDS = frozenset("a an the of and to with in on at is are there this that it its".split())
EXAMPLES = 4  # known words the warning names


def words(text: str) -> list[str]:
    """Lower-case runs of letters and digits: how prompts and vocabularies are compared ("Red," -> "red")."""
    return re.findall(r"[a-z0-9]+", text.lower())


def vocabulary_of(captions: Iterable[str], *more: Iterable[str] | None) -> list[str]:
    """The sorted distinct words of captions (and of each further word list, e.g. a base model's vocabulary)."""
    found = {w for c in captions for w in words(c)}
    for extra in more:
        found |= {w for c in extra or () for w in words(c)}
    return sorted(found)


def content_words(text: str) -> list[str]:
    """The words of text that name something: function words (a, the, of, ...) left out, order kept, no repeats."""
    return list(dict.fromkeys(w for w in words(text) if w not in FUNCTION_WORDS))


def unknown_prompt_warning(prompt: str, vocabulary: list[str] | None, model: str) -> str | None:
    """'warning: ...' when prompt names no word of the model's vocabulary; None when it names one, when it is empty
    (unconditional), or when the model records no vocabulary."""
    if vocabulary is None or not prompt.strip():
        return None
    known = sorted(set(vocabulary) - FUNCTION_WORDS)
    if set(content_words(prompt)) & set(known):
        return None
    shown = " ".join(prompt.split())
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    examples = ", ".join(known[i * len(known) // EXAMPLES] for i in range(min(EXAMPLES, len(known))))
    return (f"warning: the prompt '{shown}' names nothing model '{model}' was trained on (its captions' "
            f"{len(known)} words include {examples}); the image will not follow it")


def prompt_warnings(prompts: Iterable[str], vocabulary: list[str] | None, model: str,
                    literal: bool = False) -> list[str]:
    """Per distinct prompt, in prompt order: the note naming the colour words read as others (lexicon.py; none when
    literal), then the warning if the prompt as read names nothing the model knows."""
    out = []
    for p in dict.fromkeys(prompts):
        read, replaced = (p, []) if literal else read_colours(p, vocabulary)
        out += [w for w in (read_note(replaced), unknown_prompt_warning(read, vocabulary, model)) if w is not None]
    return out


__all__ = ["FUNCTION_WORDS", "content_words", "prompt_warnings", "unknown_prompt_warning", "vocabulary_of", "words"]
