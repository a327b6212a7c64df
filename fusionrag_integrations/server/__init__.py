"""OpenAI-compatible HTTP server (`fusionrag serve`): app.py."""
