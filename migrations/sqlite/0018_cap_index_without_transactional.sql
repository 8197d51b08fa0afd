-- messages_by_recipient_purpose serves one read: the recent sends a frequency cap counts
-- (the facts read of the send path). Caps count marketing and informational messages only
-- (a rule that caps transactional ones is refused when the rules are loaded), so a
-- transactional send, the most common kind, no longer writes its entry: one insert at a
-- place set by the recipient's hash fewer a send. The cap's query repeats the index's
-- condition, so that it can use it.
DROP INDEX messages_by_recipient_purpose;
CREATE INDEX messages_by_recipient_purpose ON messages (tenant, recipient_hash, purpose, created_at_us)
    WHERE purpose <> 'transactional';
