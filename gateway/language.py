"""Language of a message's text, as a BCP 47 code, or ``und`` when it cannot be told.

Two steps. First the script: most writing systems belong to one language (Hangul is Korean, kana Japanese, Thai,
Malayalam, Telugu, Tamil, Greek, Georgian...), so a text written mostly in one of them is answered from its letters
alone, however short: ``നന്ദി`` is Malayalam and ``謝謝`` Chinese, where a statistical model has too little to go on
and fell under its confidence cut-off. Han without kana is Chinese (simplified or traditional: ``zh``), with
hiragana Japanese. Scripts several languages share (Cyrillic, Arabic, Devanagari, Bengali) narrow the choice to their
languages: a short text takes the script's most used language unless a letter only one of them has says otherwise
(``ї`` Ukrainian, ``ے`` Urdu), a longer one is ranked by the model among those languages only.

Then, for Latin script and mixed texts, py3langid (a maintained fork of langid.py): its naive Bayes model over byte
n-grams ships inside the package and runs offline, covers 97 languages and classifies a message in tens of
microseconds. It guesses on anything, so short Latin texts are answered ``und`` before it is asked (fewer than 3 words
or 12 letters: "ok", "Hola que tal"), and so are texts without letters (emoji, numbers) and answers under
``MIN_CONFIDENCE``.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any

UNDETERMINED = "und"
MIN_WORDS = 3
MIN_LETTERS = 12
MIN_CONFIDENCE = 0.5
MAX_CHARS = 2000  # the opening of a long email says as much as the whole of it

# Unicode blocks of the scripts told apart here (https://www.unicode.org/charts/): (first, last, script)
_BLOCKS = (
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"), (0x1C80, 0x1C8F, "cyrillic"), (0x2DE0, 0x2DFF, "cyrillic"),
    (0xA640, 0xA69F, "cyrillic"),
    (0x0530, 0x058F, "armenian"), (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0x08A0, 0x08FF, "arabic"), (0xFB50, 0xFDFF, "arabic"),
    (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0980, 0x09FF, "bengali"), (0x0A00, 0x0A7F, "gurmukhi"),
    (0x0A80, 0x0AFF, "gujarati"), (0x0B00, 0x0B7F, "oriya"), (0x0B80, 0x0BFF, "tamil"), (0x0C00, 0x0C7F, "telugu"),
    (0x0C80, 0x0CFF, "kannada"), (0x0D00, 0x0D7F, "malayalam"), (0x0D80, 0x0DFF, "sinhala"),
    (0x0E00, 0x0E7F, "thai"), (0x0E80, 0x0EFF, "lao"), (0x0F00, 0x0FFF, "tibetan"), (0x1000, 0x109F, "myanmar"),
    (0x10A0, 0x10FF, "georgian"), (0x1100, 0x11FF, "hangul"), (0x1200, 0x139F, "ethiopic"), (0x1780, 0x17FF, "khmer"),
    (0x3040, 0x309F, "hiragana"), (0x30A0, 0x30FF, "katakana"), (0x31F0, 0x31FF, "katakana"),
    (0xFF66, 0xFF9F, "katakana"),
    (0x3130, 0x318F, "hangul"), (0xAC00, 0xD7AF, "hangul"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"), (0x20000, 0x3134F, "han"),
)
# scripts written by one language (for support messages, at least)
_SCRIPT_LANGUAGE = {
    "greek": "el", "armenian": "hy", "hebrew": "he", "gurmukhi": "pa", "gujarati": "gu", "oriya": "or", "tamil": "ta",
    "telugu": "te", "kannada": "kn", "malayalam": "ml", "sinhala": "si", "thai": "th", "lao": "lo", "tibetan": "bo",
    "myanmar": "my", "georgian": "ka", "ethiopic": "am", "khmer": "km",
}
# scripts several languages share: the languages the model may choose among, the most used one first
_SHARED = {
    "cyrillic": ("ru", "uk", "bg", "be", "sr", "mk", "kk"),
    "arabic": ("ar", "fa", "ur", "ps"),
    "devanagari": ("hi", "mr", "ne"),
    "bengali": ("bn", "as"),
}
# letters only one of a shared script's languages uses, checked in this order
_TELLING_LETTERS = {
    "cyrillic": (("ў", "be"), ("әғқңөұүһ", "kk"), ("їєґі", "uk"), ("ѓќѕ", "mk"), ("ђћџљњј", "sr")),
    "arabic": (("ٹڈڑںےۓھہ", "ur"), ("ټډړږښځڅ", "ps"), ("پچژگکی", "fa")),
}


@lru_cache(maxsize=1)
def _identifier() -> Any:
    import numpy
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    shipped = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    # The shipped weights are float16, and every classification cast the rows it reads to float32 before its
    # matrix product (the product is float32 either way): cast once here instead, the same scores at about 4 %
    # less of the pipeline's CPU per message, for about 30 MB more memory per process (measured)
    # (tests/test_language.py compares the scores).
    return LanguageIdentifier(shipped.nb_ptc.astype(numpy.float32), shipped.nb_pc, shipped.nb_classes,
                              shipped.tk_nextmove, shipped.tk_output, norm_probs=True, tk_row=shipped.tk_row)


def load_model() -> None:
    """Load the model now (a second or two), so that the first batch of messages does not wait for it."""
    _identifier()


@lru_cache(maxsize=4096)
def _script(char: str) -> str:
    point = ord(char)
    for first, last, script in _BLOCKS:
        if first <= point <= last:
            return script
    return "latin" if point < 0x0250 or 0x1E00 <= point <= 0x1EFF else "other"


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]  # isalpha: Unicode categories Lu, Ll, Lt, Lm, Lo, the letters


def long_enough(text: str, letters: int | None = None) -> bool:
    """Whether ``text`` holds enough letters (``letters``, when counted already) and words for the statistical
    model to be asked."""
    if (len(_letters(text)) if letters is None else letters) < MIN_LETTERS:
        return False
    words = 0
    for word in text.split():
        if any(c.isalpha() for c in word):
            words += 1
            if words >= MIN_WORDS:
                return True
    return False


def _scripts(text: str, letters: list[str]) -> Counter[str]:
    if text.isascii():  # every letter is a Latin one: the usual case, without a look-up per letter
        return Counter({"latin": len(letters)})
    return Counter(_script(c) for c in letters)


def _cjk(scripts: Counter[str]) -> str | None:
    han, hiragana, katakana, hangul = scripts["han"], scripts["hiragana"], scripts["katakana"], scripts["hangul"]
    if (han + hiragana + katakana + hangul) * 2 < sum(scripts.values()):
        return None
    if hangul and hangul >= hiragana + katakana:
        return "ko"
    # Japanese sentences carry hiragana (particles, endings); katakana alone may be a brand name in Chinese text
    if hiragana or katakana * 2 >= han + katakana:
        return "ja"
    return "zh" if han else None


def _shared(script: str, text: str) -> str:
    languages = _SHARED[script]
    if long_enough(text):
        ranked = _identifier().rank(text)
        return next((str(code) for code, _ in ranked if code in languages), languages[0])
    lowered = text.lower()
    for letters, code in _TELLING_LETTERS.get(script, ()):
        if any(letter in lowered for letter in letters):
            return code
    return languages[0]


def detect_language(text: str) -> str:
    """The BCP 47 language code of ``text`` (``ml``, ``hi``, ``zh``, ``en``...), or ``und``."""
    text = (text or "").strip()[:MAX_CHARS]
    letters = _letters(text)
    if not letters:
        return UNDETERMINED
    scripts = _scripts(text, letters)
    cjk = _cjk(scripts)
    if cjk:
        return cjk
    script, count = scripts.most_common(1)[0]
    if count * 2 >= len(letters):
        if script in _SCRIPT_LANGUAGE:
            return _SCRIPT_LANGUAGE[script]
        if script in _SHARED:
            return _shared(script, text)
    if not long_enough(text, len(letters)):
        return UNDETERMINED
    code, confidence = _identifier().classify(text)  # langid codes are ISO 639-1, valid BCP 47 tags
    if code == "zxx":  # the model's "no linguistic content"
        return UNDETERMINED
    return str(code) if confidence >= MIN_CONFIDENCE else UNDETERMINED
