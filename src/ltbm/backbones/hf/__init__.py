"""The Hugging Face machinery every family adapter shares: pipeline, drop-in, loading."""
