"""kimi-vl-server: OpenAI-compatible server for Kimi-VL on vLLM."""
