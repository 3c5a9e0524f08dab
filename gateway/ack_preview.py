"""``gateway simulate --dry-run``: the acknowledgement a customer's message would get, with nothing stored or sent."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from gateway.acks import Acknowledgements
from gateway.config import GatewayConfig
from gateway.language import detect_language
from gateway.plugins import WebhookChannel
from gateway.records import RawRecord


def preview_lines(config: GatewayConfig, channels: Mapping[str, object], connector: WebhookChannel, *, sender: str,
                  text: str, recipient: str | None, at: datetime) -> list[str]:
    """The sample request normalised as the pipeline would, then the rule's answer to it, in words."""
    public = f"{config.settings.server.public_url}/hooks/{connector.name}"
    request = connector.sample_request(sender=sender, text=text, recipient=recipient, public_url=public)
    messages = [message for item in connector.split(request) for message in connector.normalize(RawRecord(
        inbox_id=0, connector=connector.name, provider_id=item.provider_id, kind=item.kind, body=item.body,
        content_type=item.content_type, headers=request.headers, public_url=public, received_at=at))]
    if not messages:
        return ["no message: the channel would ignore this request"]
    message = messages[0]
    if message.language is None:
        message = message.model_copy(update={"language": detect_language(message.text or message.full_text)})
    shown = Acknowledgements(config, channels).preview(message)
    if shown.text is None:
        return [f"no acknowledgement: {shown.reason}"]
    return [
        f"acknowledgement (dry run, nothing sent) by acknowledgements[{shown.rule}] on {connector.name}, ticket in "
        f"{shown.crm}; detected language {message.language or 'und'}, text {shown.language}; business "
        f"{'open' if shown.is_open else 'closed'} at {at.isoformat()}:",
        *(f"  {line}" for line in shown.text.splitlines()),
        "(ticket.id shows as 12345: the real ticket's once the CRM has it; a customer acknowledged in the last "
        "repeat_after_hours, or opted out, gets none)",
    ]
