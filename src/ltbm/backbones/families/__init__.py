"""One thin adapter per Hugging Face audio-LLM family."""
