"""``servesim serve``: an OpenAI-compatible endpoint whose answers come at a simulated deployment's times."""
