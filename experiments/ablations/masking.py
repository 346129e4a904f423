"""Masking: 15% vs 30% (MosaicBERT), token vs whole-word, static (Google) vs dynamic (RoBERTa).

    python -m bert_jax.sweep experiments/ablations/masking.py --workdir workdirs/ablation_masking

"static_15" reads Google-style files masked once at creation; the dynamic variants read the
same instances unmasked and draw a new mask every epoch at load time. 30% masking predicts up
to 40 tokens per sequence of 128 (Google's cap of 20 is 15% of 128, rounded up).
"""

from experiments.ablations import common


def get_sweep():
    dynamic = {"data.input_files": "{data}/unmasked/*.array_record", "data.dynamic_masking": True}
    return common.sweep(
        {
            "static_15": {},
            "dynamic_15": dict(dynamic),
            "dynamic_30": {**dynamic, "data.masked_lm_prob": 0.3, "data.max_predictions_per_seq": 40},
            "dynamic_wwm_15": {**dynamic, "data.whole_word_masking": True},
        },
        prepare={
            "instances": common.create_instances(),
            "unmasked": common.create_instances("--no_masking"),
        },
    )
