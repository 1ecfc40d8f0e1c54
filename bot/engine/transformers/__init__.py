"""The in-process engine on Hugging Face transformers: loading, batching, sampling, tiny model."""
