-- Delivery statuses from gateways find their message by the gateway's message id.
-- PostgreSQL mirror of migrations/sqlite/0005_delivery_status.sql.
CREATE INDEX message_outcomes_by_upstream_id
    ON message_outcomes (upstream_message_id) WHERE upstream_message_id IS NOT NULL;

-- Where the application asked for delivery statuses (a Twilio-front request's
-- StatusCallback), as JSON {"url", "account_sid"}.
ALTER TABLE messages ADD COLUMN status_callback TEXT;

-- A delivery may go to a URL of its own (a StatusCallback) in a gateway's format, instead of
-- the tenant's webhook.
ALTER TABLE webhook_outbox ADD COLUMN url TEXT;
ALTER TABLE webhook_outbox ADD COLUMN format TEXT;
