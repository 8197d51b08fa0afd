-- Delivery statuses from gateways find their message by the gateway's message id.
CREATE INDEX message_outcomes_by_upstream_id
    ON message_outcomes (upstream_message_id) WHERE upstream_message_id IS NOT NULL;
