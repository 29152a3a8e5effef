"""Stages 1 and 2 of the method: prompt generation and responses, on Ray Data + vLLM."""
