"""`dtm-hf run`: recipes, the run folder, the stages and the engine that skips what is current."""
