"""Expensive artifacts and their cache: the content-addressed cache (cache), the rules that say what a
cache key holds (keys), trained models (models) and the models advlab-eval compares (model_sources)."""
