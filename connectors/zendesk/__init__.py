"""Zendesk Support CRM connector (type ``zendesk``)."""

from connectors.zendesk.client import ZendeskClient, ZendeskConfig, classify, is_closed_error
from connectors.zendesk.connector import MARKER, ZendeskCrm

__all__ = ["MARKER", "ZendeskClient", "ZendeskConfig", "ZendeskCrm", "classify", "is_closed_error"]
