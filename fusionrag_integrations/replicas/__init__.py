"""Several engines behind one OpenAI-compatible endpoint on Ray Serve (`fusionrag serve --replicas N`),
sharing the Redis chunk-KV tier, with requests routed to the replica whose memory tiers hold their chunks."""
