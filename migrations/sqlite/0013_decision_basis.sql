-- What an allowed message's consent rested on (JSON: `consent_event`, `requirement`,
-- `revoke_all`), in its leaf (format version 2) so that `audit verify` replays the decision
-- against the consent events before it in the log. NULL for rows written before, and for
-- messages that were not allowed or that consent does not gate (answers to replies).
ALTER TABLE messages ADD COLUMN basis TEXT;
