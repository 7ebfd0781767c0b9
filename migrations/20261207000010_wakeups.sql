-- Wake-ups instead of polling (`pipeline::wake`): `send_many` also notifies `pgmq_sent` with
-- each queue it sent to, as `queue::send` and `queue::send_batch` do in their statements.
-- The notifications are delivered when the sender's transaction commits, with the messages.
CREATE OR REPLACE FUNCTION send_many(queue_names text[], messages jsonb[]) RETURNS integer
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
        PERFORM pg_notify('pgmq_sent', q);
        sent := sent + 1;
    END LOOP;
    RETURN sent;
END
$$;
