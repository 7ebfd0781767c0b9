-- PGMQ before 1.5 (Supabase ships 1.4.4) reports no `queue_visible_length` in
-- `pgmq.metrics_all()`. Where the detected PGMQ lacks it, the queue metrics derive it with this
-- function (`pipeline::queue::Pgmq::metrics_all`), by PGMQ 1.5's own definition: the messages
-- whose visibility timeout has passed. The name comes from `pgmq.meta`; `%I` quotes it.
CREATE FUNCTION pgmq_visible_length(queue_name text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    visible bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM pgmq.%I WHERE vt <= now()', lower('q_' || queue_name)) INTO visible;
    RETURN visible;
END
$$;
