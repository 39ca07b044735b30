"""Generative models of crystals: a CIF language model (CrystaLLM's recipe) and a
flow-matching structure generator (FlowMM's), with the checks every sample passes
before it may become a candidate. Standalone science modules for now: the
campaign's generators `llm` and `flow` (issue 19) will build on them."""
