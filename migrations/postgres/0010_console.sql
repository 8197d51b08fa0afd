-- What the console reads. Decisions over time: a tenant's messages by time (appended at the
-- end of the tenant's range, so a send adds to a page a batch already writes). A number's
-- replies: inbound messages by recipient.
CREATE INDEX messages_by_tenant_time ON messages (tenant, created_at_us);
CREATE INDEX inbound_messages_by_recipient ON inbound_messages (tenant, recipient_hash, received_at_us);
