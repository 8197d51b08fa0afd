-- `consentry_append_leaves` (0014) ran four statements per leaf in a loop: make the head's row,
-- lock and read it, insert the leaf, rewrite the head. Every send writes two leaves (its record
-- and its outcome), so under sends those statements were a quarter of PostgreSQL's CPU. The same
-- links and hashes are now made with four statements per call, whatever its number of leaves:
--
-- 1. the heads' rows that are missing are made (placeholders, so that there is a row to lock);
-- 2. the heads are locked and read in one query, in the byte order of (tenant, recipient), the
--    order every caller locks them in, so that two transactions never wait for each other in a
--    circle; that query also yields the leaves in the same order, each recipient's in the order
--    given, and each is linked to the head or to the leaf before it about the same recipient;
-- 3. the leaves are inserted in the order given, as before;
-- 4. each head is set to the newest of its leaves.
--
-- The leaf's bytes and hash are the same as 0014's: its link field (0x01, length 32, the previous
-- leaf's hash) replaces the absent link (0x00) the leaf was built with, and its hash is RFC
-- 6962's, SHA-256(0x00 || leaf). `audit verify` rebuilds every leaf in Rust from its row and the
-- entry it links to.
CREATE OR REPLACE FUNCTION consentry_append_leaves(kinds TEXT[], ref_ids TEXT[], tenants TEXT[],
    recipients TEXT[], leaves BYTEA[]) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    total INTEGER := coalesce(array_length(kinds, 1), 0);
    hashes BYTEA[] := array_fill(NULL::BYTEA, ARRAY[total]);
    links BYTEA[] := array_fill(NULL::BYTEA, ARRAY[total]);
    head_tenants TEXT[] := ARRAY[]::TEXT[];
    head_recipients TEXT[] := ARRAY[]::TEXT[];
    head_hashes BYTEA[] := ARRAY[]::BYTEA[];
    heads INTEGER := 0;
    leaf RECORD;
    previous BYTEA;
    bytes BYTEA;
BEGIN
    IF total = 0 THEN
        RETURN;
    END IF;
    INSERT INTO log_heads (tenant, recipient_hash)
    SELECT d.t, d.r FROM (
        SELECT DISTINCT u.t, u.r FROM unnest(tenants, recipients) AS u(t, r)
        WHERE u.r IS NOT NULL
    ) AS d
    ORDER BY d.t COLLATE "C", d.r COLLATE "C"
    ON CONFLICT DO NOTHING;
    FOR leaf IN
        SELECT u.n, u.t, u.r, h.last_hash FROM unnest(tenants, recipients) WITH ORDINALITY
            AS u(t, r, n)
        JOIN log_heads h ON h.tenant = u.t AND h.recipient_hash = u.r
        ORDER BY u.t COLLATE "C", u.r COLLATE "C", u.n
        FOR UPDATE OF h
    LOOP
        IF heads > 0 AND head_tenants[heads] = leaf.t AND head_recipients[heads] = leaf.r THEN
            previous := head_hashes[heads];
        ELSE
            previous := leaf.last_hash;
            heads := heads + 1;
            head_tenants[heads] := leaf.t;
            head_recipients[heads] := leaf.r;
        END IF;
        bytes := leaves[leaf.n];
        IF previous IS NOT NULL THEN
            bytes := substring(bytes FROM 1 FOR length(bytes) - 1) || decode('0100000020', 'hex')
                || previous;
        END IF;
        hashes[leaf.n] := sha256(decode('00', 'hex') || bytes);
        links[leaf.n] := previous;
        head_hashes[heads] := hashes[leaf.n];
    END LOOP;
    FOR i IN 1 .. total LOOP
        IF recipients[i] IS NULL THEN
            hashes[i] := sha256(decode('00', 'hex') || leaves[i]);
        ELSIF hashes[i] IS NULL THEN
            RAISE EXCEPTION 'no head for the leaf %', ref_ids[i];
        END IF;
    END LOOP;
    INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash, chained, prev_hash)
    SELECT u.k, u.id, u.t, u.h, u.r IS NOT NULL, u.p
    FROM unnest(kinds, ref_ids, tenants, recipients, hashes, links) WITH ORDINALITY
        AS u(k, id, t, r, h, p, n)
    ORDER BY u.n;
    UPDATE log_heads h SET last_hash = q.hash
    FROM unnest(head_tenants, head_recipients, head_hashes) AS q(t, r, hash)
    WHERE h.tenant = q.t AND h.recipient_hash = q.r;
END;
$$;
