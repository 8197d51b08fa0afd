-- Every index of messages is written with every send. messages_by_recipient
-- (tenant, recipient_hash, created_at_us) serves nothing that
-- messages_by_recipient_purpose (tenant, recipient_hash, purpose, created_at_us)
-- does not: the send path reads a recipient's messages by purpose, and every other
-- read by recipient filters on (tenant, recipient_hash) alone. One random page
-- write less per send.
DROP INDEX messages_by_recipient;
