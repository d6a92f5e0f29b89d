"""The toy world the demo and the tests run in: synthetic fine-detail scenes (synth), tiny
random checkpoints in Hugging Face layout (tiny), the supervised base that makes the
crop-vs-full gap (sft), the demo and its probe (demo, demo_probe), the views comparison
(demo_views) and the length-varying rollout workload (answer_lengths). It may import
everything but the cli."""
