"""BERT's Table 6: how model size matters (Devlin et al. 2019, section 5.2).

    python -m bert_jax.sweep experiments/ablations/paper_table6.py --workdir DIR --variants L3_H768_A12
    python -m bert_jax.sweep experiments/ablations/paper_table6.py:paper --workdir DIR

Rows are (layers L, hidden H, heads A) from 3/768/12 to 24/1024/16, each pretrained from scratch
and fine-tuned. On the CPU budget every row keeps its L and A with H/8 (768 -> 96, 1024 -> 128),
so the grid keeps its shape at a size 2 cores can run; the paper's LM perplexity column is the
masked-LM perplexity on held-out text (lee_news on CPU), exp of the held-out MLM loss.
Columns: LM (ppl), MNLI-m, MRPC, SST-2; on CPU sentiment and paraphrase stand in for SST-2, MRPC.
"""

from experiments.ablations import common

DOCUMENTED_ARGS = ("cpu", "paper")
SIZES = ((3, 768, 12), (6, 768, 3), (6, 768, 12), (12, 768, 12), (12, 1024, 16), (24, 1024, 16))
CPU_WIDTH_DIVISOR = 8

PAPER_TABLE = {
    "title": "Table 6: ablation over BERT model size (dev set; LM perplexity on held-out training data)",
    "columns": ["LM (ppl)", "MNLI-m", "MRPC", "SST-2"],
    "rows": {
        "L3_H768_A12": ["3/768/12", 5.84, 77.9, 79.8, 88.4],
        "L6_H768_A3": ["6/768/3", 5.24, 80.6, 82.2, 90.7],
        "L6_H768_A12": ["6/768/12", 4.68, 81.9, 84.8, 91.3],
        "L12_H768_A12": ["12/768/12", 3.99, 84.4, 86.7, 92.9],
        "L12_H1024_A16": ["12/1024/16", 3.54, 85.7, 86.9, 93.3],
        "L24_H1024_A16": ["24/1024/16", 3.23, 86.6, 87.8, 93.7],
    },
}


def get_sweep(budget: str = "cpu"):
    common.check_budget(budget, __file__)
    variants = {}
    for layers, hidden, heads in SIZES:
        width = hidden // CPU_WIDTH_DIVISOR if budget == "cpu" else hidden
        variants[f"L{layers}_H{hidden}_A{heads}"] = {
            "model.num_hidden_layers": layers, "model.hidden_size": width, "model.num_attention_heads": heads,
            "model.intermediate_size": 4 * width}
    evaluations = ("sentiment", "paraphrase") if budget == "cpu" else ("mnli", "mrpc", "sst2")
    sweep = common.paper_sweep(budget, variants=variants, evaluations=evaluations, paper=PAPER_TABLE)
    sweep["common"].update({"task.eval_input_files": common.heldout_files(budget), "task.num_eval_batches": 20})
    sweep["paper"]["ours"]["LM (ppl)"] = "exp:pretrain/mlm_loss"
    return sweep
