-- Routing (DESIGN.md, "Router"). A lead no rule matches, in a rule set without a default
-- route, is recorded here: never lost, and with the tree that found no rule for it.
CREATE TABLE unmatched_leads (
    submission_id uuid        PRIMARY KEY,
    person_id     bigint      NOT NULL REFERENCES persons (id),
    alias_id      bigint      REFERENCES persons (id),
    site          text        NOT NULL,
    tree_version  bigint      NOT NULL REFERENCES decision_trees (version),
    fields        jsonb       NOT NULL,
    submitted_at  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Sends messages to several queues in one round trip: `pgmq.send_batch` once per distinct
-- queue, each queue's messages in their given order. The router sends a batch of leads to
-- many partner queues at once; one statement per queue would cost a round trip each.
CREATE FUNCTION send_many(queue_names text[], messages jsonb[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    sent integer := 0;
BEGIN
    IF cardinality(queue_names) IS DISTINCT FROM cardinality(messages) THEN
        RAISE EXCEPTION 'send_many: % queue names for % messages', cardinality(queue_names), cardinality(messages);
    END IF;
    FOR q IN SELECT DISTINCT n FROM unnest(queue_names) AS n LOOP
        PERFORM pgmq.send_batch(q, ARRAY(
            SELECT m FROM unnest(queue_names, messages) WITH ORDINALITY AS t(n, m, i) WHERE n = q ORDER BY i));
        sent := sent + 1;
    END LOOP;
    RETURN sent;
END
$$;
