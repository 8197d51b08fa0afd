-- Opt-outs recorded because a number changed hands (a carrier's deactivation file, a
-- reassigned-numbers lookup) carry their method into the consent fold, which names them in a
-- denial (`number_reassigned`). The send path's covering index gains the column, so a send
-- still reads index pages only.
DROP INDEX consent_events_by_recipient;
CREATE INDEX consent_events_by_recipient ON consent_events
    (tenant, recipient_hash, seq, id, action, level, brand, campaign, purposes, occurred_at_us, method);
