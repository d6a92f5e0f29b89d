"""Measuring a model: greedy accuracy per view on a dataset (evaluate), crop vs full answers
and their divergence (compare), the paper's benchmarks with the authors' prompts and
reader (benchmarks), the local page for one photo (studio) and the result pages (pages).
It may import models, data, method and run."""
