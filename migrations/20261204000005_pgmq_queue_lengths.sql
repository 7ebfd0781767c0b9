-- PGMQ before 1.5 (Supabase ships 1.4.4) reports no `queue_visible_length` in
-- `pgmq.metrics_all()`. Where the detected PGMQ lacks it, the queue metrics derive it with this
-- function (`pipeline::queue::Pgmq::metrics_all`), by PGMQ 1.5's own definition: the messages
-- whose visibility timeout has passed. It counts the length too, in the same statement:
-- 1.4.4's `metrics_all()` takes a fresh snapshot per queue, so a visible length counted
-- beside it could exceed a length read a moment later while the queue drains. The name comes
-- from `pgmq.meta`; `%I` quotes it.
CREATE FUNCTION pgmq_queue_lengths(queue_name text, OUT queue_length bigint, OUT queue_visible_length bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    EXECUTE format('SELECT count(*), count(*) FILTER (WHERE vt <= now()) FROM pgmq.%I', lower('q_' || queue_name))
        INTO queue_length, queue_visible_length;
END
$$;
