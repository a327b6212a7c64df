"""Quality and speed of fusion, side by side with full attention: data, prompts, metrics, harness."""
