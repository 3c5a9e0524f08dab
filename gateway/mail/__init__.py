"""Email: MIME parsing and charsets, visible-reply extraction, auto-reply detection, and the canonical message."""
