"""Language identification on ``bench.language_samples``: the gateway against py3langid behind the former cut-off.

    python -m bench.language            # table: right / undetermined / wrong, short texts and sentences
    python -m bench.language --json     # the same figures as JSON
    python -m bench.language --misses   # every text not answered right, with both answers
    python -m bench.language --doc      # rewrite the "language" section of docs/benchmarks.md

The baseline is what ``gateway.language`` did before script detection: py3langid's answer when the text has 3 words
and 12 letters (6 for unspaced scripts) and the model is at least 50 % sure, else ``und``.
"""

from __future__ import annotations

import argparse
import json
import time
import unicodedata
from collections.abc import Callable

from bench.docs import write_section
from bench.language_samples import SENTENCES, SHORT
from gateway.language import UNDETERMINED, _identifier, detect_language

_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def baseline(text: str) -> str:
    """The former detector: py3langid behind a length and confidence cut-off."""
    text = text.strip()[:2000]
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    if not letters:
        return UNDETERMINED
    unspaced = sum(1 for c in letters if unicodedata.name(c, "").startswith(_UNSPACED))
    if unspaced * 2 >= len(letters):
        if len(letters) < 6:
            return UNDETERMINED
    else:
        words = [w for w in text.split() if any(unicodedata.category(c).startswith("L") for c in w)]
        if len(words) < 3 or len(letters) < 12:
            return UNDETERMINED
    code, confidence = _identifier().classify(text)
    return str(code) if confidence >= 0.5 else UNDETERMINED


def score(detect: Callable[[str], str], samples: list[tuple[str, str]]) -> dict[str, float | int]:
    """Right, undetermined and wrong answers over ``samples``, and the slowest answer in microseconds."""
    right = undetermined = wrong = 0
    slowest = 0.0
    for expected, text in samples:
        start = time.perf_counter()
        got = detect(text)
        slowest = max(slowest, time.perf_counter() - start)
        if got == expected:
            right += 1
        elif got == UNDETERMINED:
            undetermined += 1
        else:
            wrong += 1
    return {"texts": len(samples), "right": right, "undetermined": undetermined, "wrong": wrong,
            "accuracy": round(right / len(samples), 3), "slowest_us": round(slowest * 1e6)}


def figures() -> dict[str, dict[str, dict[str, float | int]]]:
    detect_language("warm up the model")
    sets = {"short": SHORT, "sentences": SENTENCES, "all": SHORT + SENTENCES}
    return {name: {"baseline": score(baseline, samples), "gateway": score(detect_language, samples)}
            for name, samples in sets.items()}


def render(result: dict[str, dict[str, dict[str, float | int]]]) -> str:
    """The markdown section for docs/benchmarks.md."""
    lines = ["## Language identification", "",
             f"`python -m bench.language --doc`: {result['all']['gateway']['texts']} support-chat texts of our own "
             f"writing in {len({code for code, _ in SHORT + SENTENCES})} languages (`bench/language_samples.py`): "
             f"{result['short']['gateway']['texts']} short ones (a greeting, a thanks, a few words) and "
             f"{result['sentences']['gateway']['texts']} sentences. *Baseline* is py3langid behind the former "
             "cut-off (3 words and 12 letters, 6 for unspaced scripts, 50 % confidence); *gateway* is "
             "`gateway.language` (script first, py3langid for Latin script). `und` is no answer, not a wrong one.", "",
             "| texts | detector | right | und | wrong | accuracy | slowest |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, rows in result.items():
        for detector, row in rows.items():
            lines.append(f"| {name} | {detector} | {row['right']} | {row['undetermined']} | {row['wrong']} | "
                         f"{row['accuracy']:.1%} | {row['slowest_us']} µs |")
    lines += ["", "Short Latin-script texts stay `und` on purpose: \"Merci beaucoup\" or \"ok\" says too little to "
              "route a ticket on."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.language", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--misses", action="store_true", help="list the texts the gateway does not answer right")
    parser.add_argument("--doc", action="store_true", help="rewrite the language section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    result = figures()
    if args.doc:
        write_section("language", render(result))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'set':<10} {'detector':<9} {'texts':>5} {'right':>5} {'und':>5} {'wrong':>5} {'accuracy':>8}")
        for name, rows in result.items():
            for detector, row in rows.items():
                print(f"{name:<10} {detector:<9} {row['texts']:>5} {row['right']:>5} {row['undetermined']:>5} "
                      f"{row['wrong']:>5} {row['accuracy']:>8.1%}")
    if args.misses:
        for expected, text in SHORT + SENTENCES:
            got = detect_language(text)
            if got != expected:
                print(f"expected {expected}, gateway {got}, baseline {baseline(text)}: {text}")


if __name__ == "__main__":
    main()
