"""What the replicas of one gateway share live, through Redis (`--redis-url`): the per-key token refresh lock
(locks.py: one replica of the fleet asks a provider, not one per replica), revocation and catalog events (events.py),
and request-rate counters (rate.py). Without Redis, or while it is down, each replica falls back to its own
process's behaviour, said in the log, the metrics and `/readyz` (status.py), never to a wrong answer."""
