"""What the replicas of one gateway share live, through Redis (`--redis-url`): the per-key token refresh lock (so
one replica of the fleet asks a provider, not one per replica). Without Redis, or while it is down, each replica
falls back to its own process's behaviour, said in the log and in the metrics, never to a wrong answer."""
