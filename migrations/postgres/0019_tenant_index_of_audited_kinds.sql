-- log_leaves_by_tenant serves the audit pages of a tenant's messages and consent events
-- (GET /v1/audit/messages and /v1/audit/consents), nothing else: a send's outcome, a
-- release, a reply or an erasure is found through its message or its recipient. Every
-- send wrote two entries (its record's leaf and its outcome's); now one. The queries
-- repeat the condition (rows::AUDITED_KINDS) so that SQLite uses the index.
DROP INDEX log_leaves_by_tenant;
CREATE INDEX log_leaves_by_tenant ON log_leaves (tenant, kind, leaf_index)
    WHERE leaf_index IS NOT NULL AND kind IN ('message', 'consent_event');
