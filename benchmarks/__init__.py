"""Load generation, reports and capacity planning: an outside client of any OpenAI endpoint."""
