"""Video-QA benchmarks, methods and baselines, ablations, analyses and reports."""
