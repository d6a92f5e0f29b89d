"""Before a run: will it fit and how long will a step take (plan: memory per phase and
seconds per step, from the config files alone), and does this machine work as it should
(doctor: the BLAS, the kernels; doctor_bench: a short measured run against the plan). It
may import run, models, data and method."""
