"""email addresses stored in mixed case folded to lower case (case folding is now the default)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import logging

from alembic import op

from gateway.identity.fold import fold_stored_emails

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)


def upgrade() -> None:
    report = fold_stored_emails(op.get_bind())
    if report.folded or report.merges or report.suggestions or report.directory:
        log.warning("email addresses folded to lower case: %d identifiers (%d duplicates dropped), %d customers "
                    "merged, %d suggestions, %d directory entries", report.folded, report.dropped, report.merges,
                    report.suggestions, report.directory)


def downgrade() -> None:
    pass  # the case an address was first written in is not kept
