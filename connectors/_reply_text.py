"""The text of an agent's reply for chat channels that carry attachments as links (Slack, X), and the rule every
channel that sends attachments by URL shares (Twilio, Meta too): a file with no link is refused, never dropped."""

from __future__ import annotations

from gateway.errors import PermanentError
from gateway.model import Message

_LINK_SCHEMES = ("https://", "http://")


def require_links(message: Message, channel_label: str) -> None:
    """Refuse a reply with an attachment that has no web link (bytes kept only in the gateway's store).

    Such a file cannot be carried by a channel that sends attachments by URL: the reply is refused before anything
    is sent, so the agent learns it rather than the customer silently missing the file.
    """
    for attachment in message.attachments:
        if not attachment.location.startswith(_LINK_SCHEMES):
            raise PermanentError(
                f"the attachment {attachment.filename!r} cannot go out on {channel_label}: this channel carries "
                "attachments as links, and this file has none. Share it as a link, or send it another way.",
                code="attachment_not_linkable")


def text_with_links(message: Message, channel_label: str) -> str:
    """The reply's text, then one line per attachment: its file name and link (``require_links`` first)."""
    require_links(message, channel_label)
    lines = [f"{attachment.filename}: {attachment.location}" for attachment in message.attachments]
    text = message.text.strip()
    return "\n".join([text, *lines] if text else lines)
