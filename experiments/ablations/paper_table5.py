"""BERT's Table 5: what the pretraining tasks contribute (Devlin et al. 2019, section 5.1).

    python -m bert_jax.sweep experiments/ablations/paper_table5.py --workdir DIR          # CPU budget
    python -m bert_jax.sweep experiments/ablations/paper_table5.py:paper --workdir DIR    # the paper's

Rows, as in the paper (BERT-base there, a 4-layer width-128 BERT on CPU):
  mlm_nsp            BERT: masked LM + next-sentence prediction
  no_nsp             masked LM only
  ltr_no_nsp         a left-to-right LM (causal attention, next-token loss; GPT-style), no NSP;
                     the left-only constraint stays in fine-tuning, as in the paper
  ltr_no_nsp_bilstm  the same pretrained model, fine-tuned with a randomly initialised BiLSTM on
                     top of the encoder (one pretraining run, shared with ltr_no_nsp)
All rows read the same sentence pairs (half with a random second segment); the masked-LM rows
mask them at load time, the LTR rows read them as they are. Columns: the paper's MNLI-m, QNLI,
MRPC, SST-2 and SQuAD (dev); on CPU our sentiment (Rotten Tomatoes, SST-2's source) and Bible
paraphrase (MRPC-like) stand in for SST-2 and MRPC, and WNUT-16 NER, a column the paper's Table 5
lacks, is the token-level task where it puts the LTR model's largest loss (SQuAD: 88.5 to 77.8).
The paper budget needs $BERT_JAX_PAPER_DATA (see experiments/ablations/common.py).
"""

from experiments.ablations import common

DOCUMENTED_ARGS = ("cpu", "paper")

PAPER_TABLE = {
    "title": "Table 5: ablation over the pretraining tasks (dev set)",
    "columns": ["MNLI-m", "QNLI", "MRPC", "SST-2", "SQuAD", "NER"],  # NER: ours only (None in the paper)
    "rows": {
        "mlm_nsp": ["BERT-BASE", 84.4, 88.4, 86.7, 92.7, 88.5, None],
        "no_nsp": ["No NSP", 83.9, 84.9, 86.5, 92.6, 87.9, None],
        "ltr_no_nsp": ["LTR & No NSP", 82.1, 84.3, 77.5, 92.1, 77.8, None],
        "ltr_no_nsp_bilstm": ["+ BiLSTM", 82.1, 84.1, 75.7, 91.6, 84.9, None],
    },
}


def get_sweep(budget: str = "cpu"):
    common.check_budget(budget, __file__)
    ltr = {"data.next_sentence_prediction": False, "model.causal_attention": True, "task.objective": "next_token",
           "data.unmasked": True, "data.dynamic_masking": False,
           "data.input_files": common.input_files(budget, common.UNMASKED)}
    if budget == "cpu":
        ltr["task.next_token_predictions"] = common.CPU_LTR_PREDICTIONS
    variants = {
        "mlm_nsp": {},
        "no_nsp": {"data.next_sentence_prediction": False},
        "ltr_no_nsp": dict(ltr),
        "ltr_no_nsp_bilstm": {"pretrain": dict(ltr), "finetune": {"task.head": "bilstm"}},
    }
    evaluations = ("sentiment", "paraphrase", "ner") if budget == "cpu" else ("mnli", "qnli", "mrpc", "sst2", "squad")
    return common.paper_sweep(budget, variants=variants, evaluations=evaluations, paper=PAPER_TABLE)
