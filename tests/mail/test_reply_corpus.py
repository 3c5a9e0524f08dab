"""The visible reply over the reply corpus: thresholds, coverage, and the rules one by one."""

from __future__ import annotations

import time

import pytest

from gateway.mail import quotes
from gateway.mail.quotes import visible_reply
from tests.mail.reply_corpus import ReplyCase, normal, reply_cases, score

CASES = reply_cases()
EXACT_TARGET = 0.95


def test_corpus_covers_languages_clients_formats_and_styles() -> None:
    assert len(CASES) >= 300
    assert len({c.name for c in CASES}) == len(CASES)
    assert len({c.lang for c in CASES}) >= 15
    assert len({c.client for c in CASES}) >= 10
    assert {c.format for c in CASES} == {"plain", "html"}
    assert {"top", "bottom", "interleaved", "forward", "signature"} <= {c.style for c in CASES}
    for lang in ("pt", "ru", "uk", "no", "vi", "ml", "te", "hi", "ta"):
        assert sum(1 for c in CASES if c.lang == lang) >= 10, lang


def test_visible_reply_meets_the_targets_and_never_loses_customer_text() -> None:
    results = {c.name: score(visible_reply(c.text()), c.expected) for c in CASES}
    lost = sorted(name for name, s in results.items() if s.lost)
    wrong = sorted(name for name, s in results.items() if not s.exact)
    assert lost == []
    assert 1 - len(wrong) / len(CASES) >= EXACT_TARGET, wrong


@pytest.mark.parametrize("case", [c for c in CASES if c.style in ("forward", "bottom", "interleaved")],
                         ids=lambda c: c.name)
def test_text_after_a_quote_and_forwarded_bodies_are_kept(case: ReplyCase) -> None:
    assert not score(visible_reply(case.text()), case.expected).lost


def test_only_the_head_of_a_huge_body_is_searched() -> None:
    reply = "Please call me back.\n" + ("x" * 70 + "\n") * (quotes.MAX_CHARS // 70 + 10)
    late_quote = "\nOn Mon, 3 Jun 2024 at 10:12, Support <support@example.test> wrote:\n> old\n"
    assert visible_reply(reply + late_quote) == (reply + late_quote).strip()  # nothing searched past the cap is cut
    early = "Please call me back.\n\nOn Mon, 3 Jun 2024 at 10:12, Support <support@example.test> wrote:\n"
    assert visible_reply(early + "> old line\n" * 200_000) == "Please call me back."


def test_sent_from_my_is_a_device_line_only_when_it_is_one() -> None:
    assert visible_reply("Thanks!\n\nSent from my iPhone") == "Thanks!"
    sentence = "Thanks!\nSent from my laptop the upload fails, from my phone it works."
    assert visible_reply(sentence) == sentence


def test_closing_words_never_cut_what_follows() -> None:
    text = "Tak.\n\nMed venlig hilsen\nMette\n\nPS: ordre 7781."
    assert normal(visible_reply(text)) == normal(text)


def test_attribution_wrapped_over_three_lines_goes_with_the_quote() -> None:
    text = ("Parfait, merci.\n\nLe lun. 3 juin 2024 à 10:12, Support <\nsupport@example.test> a\nécrit :\n"
            "> Veuillez redémarrer.\n")
    assert visible_reply(text) == "Parfait, merci."


def test_empty_and_quote_only_bodies() -> None:
    assert visible_reply("   \n") == ""
    only_quote = "On Mon, 3 Jun 2024 at 10:12, Support <support@example.test> wrote:\n> old"
    assert visible_reply(only_quote) == only_quote  # nothing new: the agent sees the text rather than nothing


ADVERSARIAL = {
    "openers": ("x On 1 " * 42 + ":\n") * 400,
    "spaces_then_colon": (" " * 299 + "x:\n") * 1000,
    "digits_then_colon": ("1" * 299 + ":\n") * 1000,
    "addresses": ("On 3 Jun 2024 10:12 " + "a@b.c " * 45 + "wrote:\n") * 1000,
    "alternating_quotes": "> a\nb\n" * 20000,
    "dashes": ("----- " * 50 + "\n") * 1000,
    "header_labels": "From: x\n" * 20000,
    "one_long_line": "a" * 1_000_000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_no_input_makes_the_trimming_slow(name: str) -> None:
    # measured at under 10 ms each; an unbounded pattern took 50 s on "openers"; CPU time, so a busy machine
    # does not make this fail
    start = time.process_time()
    reply = visible_reply(ADVERSARIAL[name])
    assert time.process_time() - start < 1.0
    assert reply


def test_full_pattern_checks_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    spend = quotes._Budget.spend
    monkeypatch.setattr(quotes._Budget, "spend", lambda self: calls.append(1) or spend(self))
    text = "Note: see below\n" * 4000
    assert visible_reply(text) == text.strip()
    assert len(calls) <= 2 * (quotes.MAX_CHECKS + 1)
