"""thunkscope: observable drop-in async helpers for LLM backends."""
