"""The method, Vision-OPD's training step: the views (views: the student's full image, the
teacher's evidence crop), on-policy rollouts (rollout: continuous batching of a step's
prompts), scoring the same sampled tokens under both views (prefix: the prompt run once
for its n responses), the token-level divergence and its kernels (loss, ../metal), the
teacher's weights (teacher), the loop and its step (trainer) and the held-out check
(validation). It may import models, data and run, never engines, evaluation, builder,
toy or cli."""
