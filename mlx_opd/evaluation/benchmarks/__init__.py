"""The paper's evaluation benchmarks, read from their published Hugging Face layouts.

One module per benchmark (its layout, the paper's prompt template, its answer format and
category field); `registry` names them; `run` evaluates one with caching and resume;
`report` compares two evaluations; `judge` optionally maps unparsed answers with a local
model. Nothing here imports mlx until a model is evaluated.
"""
