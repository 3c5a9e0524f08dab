"""The text of an agent's reply for chat channels that carry attachments as links (Slack, X)."""

from __future__ import annotations

from gateway.errors import PermanentError
from gateway.model import Message

_LINK_SCHEMES = ("https://", "http://")


def text_with_links(message: Message, channel_label: str) -> str:
    """The reply's text, then one line per attachment: its file name and link.

    An attachment without a web link (bytes kept only in the gateway's store) cannot be carried: the reply is
    refused before anything is sent, so the agent learns it rather than the customer silently missing the file.
    """
    lines = []
    for attachment in message.attachments:
        if not attachment.location.startswith(_LINK_SCHEMES):
            raise PermanentError(
                f"the attachment {attachment.filename!r} cannot go out on {channel_label}: this channel carries "
                "attachments as links, and this file has none. Share it as a link, or send it another way.",
                code="attachment_not_linkable")
        lines.append(f"{attachment.filename}: {attachment.location}")
    text = message.text.strip()
    return "\n".join([text, *lines] if text else lines)
