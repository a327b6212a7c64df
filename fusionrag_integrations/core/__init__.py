"""The engine: our model runtime, chunk-KV fusion and the stores behind it."""
