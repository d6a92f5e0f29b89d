"""An observer for the real ms-swift run (tests/test_swift_run.py), loaded through
PYTHONPATH: it records, for every batch ms-swift's GKD trainer encodes, how many image
tokens the student's and the teacher's inputs hold, by wrapping the function the trainer
calls (swift/rlhf_trainers/gkd_helpers.py encode_gkd_samples, ms-swift 4.6.0) before the
trainer imports it. It changes nothing it observes."""

import json
import os

_OUT = os.environ.get("MLX_OPD_SWIFT_TAP")

if _OUT:
    try:
        from swift.rlhf_trainers import gkd_helpers
    except ImportError:  # not the training process (e.g. the `swift` launcher's own shell)
        gkd_helpers = None
    if gkd_helpers is not None:
        _encode = gkd_helpers.encode_gkd_samples

        def encode_gkd_samples(samples, template):
            student, teacher, has_opsd = _encode(samples, template)
            token = getattr(template, "image_token_id", None)

            def count(enc):
                return sum(int(i == token) for i in enc.get("input_ids", []))
            with open(_OUT, "a", encoding="utf-8") as f:
                for s, t in zip(student, teacher):
                    f.write(json.dumps({"student": count(s), "teacher": count(t),
                                        "opsd": has_opsd, "image_token_id": token}) + "\n")
            return student, teacher, has_opsd

        gkd_helpers.encode_gkd_samples = encode_gkd_samples
