"""The operations console at ``/admin``: message trace, customers, dead letters, channels and the audit log.

Server-rendered pages on the gateway's own Flask app (``gateway.console.app``), behind local accounts
(``gateway.console.accounts``); the queries behind the pages live beside them and know nothing of Flask.
"""
