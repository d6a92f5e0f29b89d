"""Models: the one door to mlx-vlm. vlm holds the adapter everything else calls (load,
encode, batches, the head, image features, response log-probs), re-exported here, so
`from mlx_opd import models; models.load(...)`; lora adds and saves adapters, layouts maps
Hugging Face names, replicas and replica_tokenizer build offline replicas of the real
models (with chat_templates), grad_checkpoint wraps decoder layers. Only this package
imports mlx_vlm's internals. It may import run (files, config, errors), nothing above."""

from mlx_opd.models.vlm import (  # noqa: F401
    BLOCK_BIAS,
    SHARED_FEATURE_FAMILIES,
    AdapterMismatchError,
    Batch,
    Encoded,
    Loaded,
    ModelNotFoundError,
    _forward,
    apply_head,
    base_identity,
    blocked_token_ids,
    check_adapter_config,
    check_adapter_fits,
    compute_dtype,
    decode,
    encode,
    encode_text,
    eos_token_ids,
    format_prompt,
    head_as_identity,
    image_features,
    image_token_count,
    input_features,
    lm_head,
    lm_head_key,
    load,
    make_batch,
    pad_responses,
    precomputed_inputs,
    reset_rope_state,
    resolve_path,
    response_hidden,
    response_logits,
    response_logprobs,
    sampling_bias,
)
