"""A small run of the identity evaluation (bench/identity_eval.py): no false merge, all the evidence used."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise as successive
from pathlib import Path
from typing import Any

import pytest

from bench.identity_data import WINDOW, generate
from bench.identity_eval import evaluate, pairwise, write_section


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return evaluate(people=300, seed=11, workdir=tmp_path_factory.mktemp("identity-eval"))


def test_no_false_merge_and_every_strong_link_used(result: dict[str, Any]) -> None:
    assert result["rejected"] == {}, "every generated written form must normalise"
    assert result["false_merges"] == 0, result["false_merge_examples"]
    assert result["customers_holding_several_labels"] == 0
    assert result["ideal"]["precision"] == 1.0, "the ground truth's own evidence graph joins different people"
    assert result["versus_ideal"]["recall"] == 1.0, result["split_examples"]
    assert result["versus_ideal"]["precision"] == 1.0
    assert result["clustering"]["recall"] >= 0.5
    assert result["clustering"]["recall"] == pytest.approx(result["recall_ceiling"])


def test_threading_and_contacts(result: dict[str, Any]) -> None:
    assert result["threading"]["precision"] >= 0.97  # below 1 only where two people share a phone or address
    assert result["threading"]["recall"] >= result["threading_ideal"]["recall"] - 0.02
    assert result["contacts"]["mean"] == pytest.approx(result["contacts_ideal"]["mean"])
    assert sum(result["thread_rules"].values()) == result["fed"]
    for row in result["forms"]:
        assert row["split"] == 0 and row["joined_wrongly"] == 0, row


def test_generator_is_deterministic_and_keeps_its_time_rules() -> None:
    _people, messages = generate(200, seed=3)
    again = generate(200, seed=3)[1]
    assert [(m.at, m.sender, m.label) for m in messages] == [(m.at, m.sender, m.label) for m in again]
    assert {m.channel for m in messages} == {"sms", "whatsapp", "email", "slack"}
    by_problem: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
    for m in messages:
        by_problem[m.problem].append(m.at)
    for times in by_problem.values():
        assert all(b - a < WINDOW for a, b in successive(times))
    spans: dict[int, list[tuple]] = defaultdict(list)  # type: ignore[type-arg]
    for problem, times in by_problem.items():
        spans[int(problem[1:].split(".")[0])].append((min(times), max(times)))
    for person_spans in spans.values():
        person_spans.sort()
        assert all(b[0] - a[1] > WINDOW for a, b in successive(person_spans))


def test_pairwise_scores() -> None:
    score = pairwise(["a", "a", "a", "b"], [1, 1, 2, 2])
    assert (score["true_pairs"], score["predicted_pairs"], score["correct_pairs"]) == (2, 3, 1)
    assert score["precision"] == pytest.approx(1 / 3) and score["recall"] == pytest.approx(1 / 2)


def test_sections_of_the_benchmark_page_are_replaced_in_place(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nother section\n", encoding="utf-8")
    write_section("identity-eval", "first", page)
    write_section("identity-eval", "second", page)
    text = page.read_text(encoding="utf-8")
    assert "other section" in text and "second" in text and "first" not in text
    assert text.count("<!-- identity-eval:start -->") == 1
