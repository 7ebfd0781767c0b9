-- The fixed PGMQ queues of DESIGN.md ("Queues"). Partner queues (`partner_<name>` and
-- `partner_<name>_dlq`) are created when a partner is added. `pgmq.create` is idempotent.
SELECT pgmq.create('submissions');
SELECT pgmq.create('submissions_dlq');
SELECT pgmq.create('routing');
SELECT pgmq.create('routing_dlq');
SELECT pgmq.create('compile');
