"""Language of a message's text, as a BCP 47 code, or ``und`` when the text is too short to tell.

Detection uses py3langid (a maintained fork of langid.py): its naive Bayes model over byte n-grams ships inside the
package and runs offline, covers 97 languages (among them Malayalam, Telugu, Hindi, Tamil, Arabic, Chinese and the
European languages) and classifies a message in tens of microseconds. It guesses on anything, so short texts are
answered ``und`` before it is asked: fewer than 3 words or 12 letters (6 for scripts written without spaces, such as
Chinese, Japanese and Thai), and text without letters (emoji, numbers).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any

UNDETERMINED = "und"
MIN_WORDS = 3
MIN_LETTERS = 12
MIN_LETTERS_UNSPACED = 6
MIN_CONFIDENCE = 0.5
MAX_CHARS = 2000  # the opening of a long email says as much as the whole of it
# Scripts written without spaces between words: their letter count stands in for the word count.
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def load_model() -> None:
    """Load the model now (a second or two), so that the first batch of messages does not wait for it."""
    _identifier()


def _is_unspaced(char: str) -> bool:
    try:
        name = unicodedata.name(char)
    except ValueError:
        return False
    return name.startswith(_UNSPACED)


def long_enough(text: str) -> bool:
    """Whether ``text`` holds enough letters and words for a detection worth making."""
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    if not letters:
        return False
    unspaced = sum(1 for c in letters if _is_unspaced(c))
    if unspaced * 2 >= len(letters):
        return len(letters) >= MIN_LETTERS_UNSPACED
    words = [w for w in text.split() if any(unicodedata.category(c).startswith("L") for c in w)]
    return len(words) >= MIN_WORDS and len(letters) >= MIN_LETTERS


def detect_language(text: str) -> str:
    """The BCP 47 language code of ``text`` (``ml``, ``hi``, ``zh``, ``en``...), or ``und``."""
    text = (text or "").strip()[:MAX_CHARS]
    if not long_enough(text):
        return UNDETERMINED
    code, confidence = _identifier().classify(text)  # langid codes are ISO 639-1, valid BCP 47 tags
    return str(code) if confidence >= MIN_CONFIDENCE else UNDETERMINED
