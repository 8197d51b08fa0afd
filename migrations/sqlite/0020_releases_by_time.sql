-- `consentry messages in-doubt` (Messages::in_doubt) lists the messages a release allowed in a
-- period with no outcome: it read every release to find the period's (releases had no index
-- by time), right when an operator needs the answer, after a crash. The releases that allowed
-- a message, by time: the query's part about releases reads the period's only. An entry a
-- release, at the index's end (releases come in time order). The query repeats the condition.
CREATE INDEX message_releases_allowed_by_time ON message_releases (decided_at_us)
    WHERE decision = 'allowed';
