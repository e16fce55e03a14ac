"""Whisper, the embedded real model: CTranslate2 weights and their log-mel front end."""
