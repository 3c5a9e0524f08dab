"""Salesforce CRM connector (type ``salesforce``)."""

from connectors.salesforce.client import Budget, SalesforceClient, SalesforceConfig
from connectors.salesforce.connector import MARKER_PREFIX, SalesforceCrm

__all__ = ["MARKER_PREFIX", "Budget", "SalesforceClient", "SalesforceConfig", "SalesforceCrm"]
