"""vLLM plugin for Kimi-VL: registers our model class, config, tokenizer and processor."""

def register() -> None:
    pass
