"""The OpenAI-compatible server (moecc-serve): http (routes, auth, errors, SSE), protocol (OpenAI's
request and response shapes), scheduler (the engine thread: slots and continuous batching),
parsers (Qwen3's thinking and tool calls), metrics (Prometheus)."""
