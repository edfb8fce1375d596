"""Callbacks that run `lleval.Evaluator` inside the loops of training frameworks (each imports its own)."""
