"""Language detection: each required language from a real sentence, ``und`` for short texts, and routing on it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from bench.language import baseline, score
from bench.language_samples import SENTENCES as SAMPLE_SENTENCES
from bench.language_samples import SHORT
from gateway.config import load_config
from gateway.language import UNDETERMINED, detect_language
from gateway.mail.mime import parse_mail
from gateway.pipeline import PipelineWorker
from gateway.runtime import build_runtime
from gateway.storage.tables import messages, outbox
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.test_pipeline import sms

SENTENCES = {
    "ml": "എന്റെ ഓർഡർ ഇതുവരെ എത്തിയിട്ടില്ല, ദയവായി സഹായിക്കാമോ?",
    "te": "నా ఆర్డర్ ఇంకా రాలేదు, దయచేసి సహాయం చేయండి",
    "hi": "मेरा ऑर्डर अभी तक नहीं आया है, कृपया मदद करें",
    "ta": "என் ஆர்டர் இன்னும் வரவில்லை, தயவுசெய்து உதவுங்கள்",
    "ar": "لم يصل طلبي بعد، هل يمكنك المساعدة من فضلك؟",
    "zh": "我的订单还没有到，请帮我查一下好吗？",  # noqa: RUF001 (Chinese punctuation is part of the text)
    "en": "My order has not arrived yet, could you please help me?",
    "de": "Meine Bestellung ist noch nicht angekommen, können Sie mir bitte helfen?",
    "fr": "Ma commande n'est pas encore arrivée, pouvez-vous m'aider s'il vous plaît ?",
    "es": "Mi pedido todavía no ha llegado, ¿me pueden ayudar por favor?",
    "it": "Il mio ordine non è ancora arrivato, potete aiutarmi per favore?",
    "pt": "Meu pedido ainda não chegou, vocês podem me ajudar por favor?",
    "nl": "Mijn bestelling is nog niet aangekomen, kunnen jullie mij alstublieft helpen?",
    "pl": "Moje zamówienie jeszcze nie dotarło, czy możecie mi pomóc?",
    "sv": "Min beställning har inte kommit fram än, kan ni hjälpa mig?",
    "ru": "Мой заказ ещё не пришёл, помогите пожалуйста разобраться",
}


@pytest.mark.parametrize(("code", "text"), SENTENCES.items(), ids=list(SENTENCES))
def test_each_required_language_is_recognised(code: str, text: str) -> None:
    assert detect_language(text) == code


@pytest.mark.parametrize("text", ["", "   ", "ok", "ok thanks", "hello", "Hola que tal", "thanks a lot",
                                  "👍", "👍🙏🎉", "😀 😀 😀 😀", "12345 6789 000", "#1042 ???"])
def test_short_texts_and_emoji_are_undetermined(text: str) -> None:
    assert detect_language(text) == UNDETERMINED


def test_short_chinese_sentence_counts_characters_not_words() -> None:
    assert detect_language("我的订单还没到") == "zh"


@pytest.mark.parametrize(("code", "text"), [
    ("zh", "你好"), ("zh", "謝謝"), ("zh", "收到了，謝謝"), ("ja", "ありがとう"), ("ja", "返品したいです"),  # noqa: RUF001
    ("ko", "감사합니다"), ("th", "ขอบคุณ"), ("ml", "നന്ദി"), ("te", "ధన్యవాదాలు"), ("ta", "நன்றி"),
    ("el", "Ευχαριστώ"), ("he", "תודה"), ("ka", "მადლობა"), ("hi", "नमस्ते"), ("bn", "ধন্যবাদ"), ("ar", "شكرا"),
    ("ru", "Спасибо"), ("uk", "Привіт"), ("fa", "متشکرم"), ("ur", "شکریہ"),
])
def test_short_texts_are_told_by_their_script(code: str, text: str) -> None:
    """A greeting or a thanks in a script of its own fell under the model's confidence cut-off (``und``)."""
    assert detect_language(text) == code


def test_han_is_chinese_unless_kana_make_it_japanese() -> None:
    assert detect_language("東京駅で買いました") == "ja"
    assert detect_language("我买的ソニー耳机坏了，可以换一个新的吗") == "zh"  # noqa: RUF001 (a Japanese brand name)
    assert detect_language("배송 언제 와요? 注文") == "ko"


def test_a_big5_email_decoded_right_is_chinese() -> None:
    """Traditional Chinese in Big5 came back ``und``: short texts fell under the cut-off, longer ones were scored
    as Cantonese or Wu by the model at low confidence."""
    for body in ("謝謝您的幫忙", "收到了，謝謝", "您好，我上週訂購的商品到現在還沒有收到，請幫我查詢一下物流狀況。"):  # noqa: RUF001
        raw = (b"From: Mei <mei@example.com>\r\nTo: help@example.com\r\nSubject: order\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=big5\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               + body.encode("big5") + b"\r\n")
        mail = parse_mail(raw)
        assert mail.text.strip() == body
        assert detect_language(mail.text) == "zh"


def test_latin_script_stays_with_the_model() -> None:
    """Script alone says nothing about a Latin text: short ones stay ``und``, sentences go to the model."""
    assert detect_language("Merci beaucoup") == UNDETERMINED
    assert detect_language("Goedemiddag, mijn pakket is beschadigd aangekomen, wat moet ik nu doen?") == "nl"


def test_benchmark_set_figures() -> None:
    """``python -m bench.language``: on the short texts of the set the former detector answered 6 of 60 right;
    script detection answers every text in a script of its own, and no sentence wrong."""
    short = score(detect_language, SHORT)
    sentences = score(detect_language, SAMPLE_SENTENCES)
    assert short["right"] >= 48 and short["wrong"] <= 1
    assert sentences["right"] == sentences["texts"]
    assert score(baseline, SHORT)["right"] < short["right"]


def test_a_long_email_is_judged_on_its_opening() -> None:
    text = "\n".join([SENTENCES["de"]] * 700) + "\n" + SENTENCES["en"] * 700  # ~100 KB, quoted English below
    assert detect_language(text) == "de"


def test_detection_is_cheap_enough_for_every_message() -> None:
    detect_language(SENTENCES["en"])  # loads the model
    timings = []
    for _ in range(20):
        for text in SENTENCES.values():
            start = time.perf_counter()
            detect_language(text)
            timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.005


ZENDESK_CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  helpdesk: {{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zendesk-token}}
routes:
  - {{from: [sms-main], to: helpdesk}}
"""


def test_whatsapp_in_malayalam_gets_the_ml_tag(write_config: Callable[..., Path]) -> None:
    rt = build_runtime(load_config(write_config(ZENDESK_CONFIG)), http=requests.Session())
    try:
        rt.queues.store_inbox("sms-main", [
            sms("SM" + "a" * 32, "whatsapp:+919847000001", SENTENCES["ml"], ProfileName="Anil"),
            sms("SM" + "b" * 32, "+919847000002", SENTENCES["ml"]),
            sms("SM" + "c" * 32, "whatsapp:+919847000003", "👍"),
        ], {}, f"{PUBLIC_URL}/hooks/sms-main")
        worker = PipelineWorker(rt, "test-p")
        while drain_once(worker):
            pass
        with rt.engine.connect() as conn:
            rows = conn.execute(select(messages.c.provider_message_id, messages.c.data, outbox.c.fields)
                                .join(outbox, outbox.c.message_id == messages.c.id)
                                .order_by(messages.c.provider_message_id)).all()
    finally:
        rt.close()
    assert [(row.data["channel"], row.data["language"], row.fields["tags"]) for row in rows] == [
        ("whatsapp", "ml", ["channel-gateway", "whatsapp", "ml"]),
        ("sms", "ml", ["channel-gateway", "sms"]),
        ("whatsapp", "und", ["channel-gateway", "whatsapp"]),
    ]


def test_the_float32_weights_give_the_scores_of_the_shipped_float16_model() -> None:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from gateway.language import _identifier

    shipped = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    assert str(shipped.nb_ptc.dtype) == "float16"  # else the cast in _identifier has no reason to be
    texts = [text for _, text in SAMPLE_SENTENCES] + [text for _, text in SHORT] + [
        "Where is my order? I paid on Monday", "ok", "Dónde está mi pedido, lo pagué el lunes"]
    for text in texts:
        assert _identifier()._decide(text).tolist() == shipped._decide(text).tolist(), text
        assert _identifier().rank(text) == shipped.rank(text)
