"""``mcdrop train``: its flags, the options they make, and the entry point that prints the test metrics.

Values are range-checked by :meth:`~mcdrop.training.options.TrainOptions.check`; the training itself is
:func:`mcdrop.training.train.train`.
"""

from __future__ import annotations

import argparse
import json

from mcdrop.core.registry import MODEL_CLASSES
from mcdrop.training.options import TrainOptions
from mcdrop.training.train import REPORT_FILE, train


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _float_list(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mcdrop train``; values are range-checked by :meth:`TrainOptions.check`."""
    d = TrainOptions("mlp", "", "")
    data = parser.add_argument_group("data")
    data.add_argument("--architecture", required=True, choices=sorted(MODEL_CLASSES))
    data.add_argument("--data", default="rt", help="'rt' (Rotten Tomatoes, split by movie) or a CSV/TSV/JSONL file")
    data.add_argument("--text-column", default=d.text_column)
    data.add_argument("--label-column", default=d.label_column)
    data.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the train/validation/test split")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="models", help="parent directory of the checkpoint")
    out.add_argument("--name", required=True, help="checkpoint name (its directory under --out)")
    out.add_argument("--model-version", default=d.model_version, help="version string stored in the checkpoint")
    text = parser.add_argument_group("vocabulary")
    text.add_argument("--vocab-size", type=int, default=d.vocab_size, help="entries incl. <pad>/<unk> and n-grams")
    text.add_argument("--min-count", type=int, default=d.min_count)
    text.add_argument("--ngram-max", type=int, default=None, help="default: 2 for mlp, 1 for gru")
    text.add_argument("--max-tokens", type=int, default=d.max_tokens)
    model = parser.add_argument_group("model")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim)
    model.add_argument("--hidden-dims", type=_int_list, default=d.hidden_dims, help="mlp: comma-separated widths")
    model.add_argument("--dropout-p", type=_float_list, default=None, help="mlp: one p per linear layer (or one)")
    model.add_argument("--hidden-dim", type=int, default=d.hidden_dim, help="gru: hidden size per direction")
    model.add_argument("--num-layers", type=int, default=d.num_layers)
    model.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=d.bidirectional)
    model.add_argument("--word-dropout", type=float, default=d.word_dropout, help="gru: drop whole tokens")
    model.add_argument("--input-dropout", type=float, default=d.input_dropout, help="gru: locked embedding dropout")
    model.add_argument("--weight-dropout", type=float, default=d.weight_dropout, help="gru: DropConnect on W_hh")
    model.add_argument(
        "--gate-dropout", type=float, default=d.gate_dropout, help="gru: locked dropout on the gates' input projections"
    )
    model.add_argument("--output-dropout", type=float, default=d.output_dropout, help="gru: before the classifier")
    model.add_argument("--embed-init-std", type=float, default=d.embed_init_std, help="std of initial embeddings")
    model.add_argument("--init-embeddings", default=None, help="gru: copy unigram embeddings from an MLP checkpoint")
    model.add_argument("--freeze-embeddings", action="store_true", help="do not train the embedding table")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decoupled weight decay")
    opt.add_argument("--lr-decay", type=float, default=d.lr_decay, help="learning rate factor applied each epoch")
    opt.add_argument("--batch-size", type=int, default=d.batch_size)
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--patience", type=int, default=d.patience, help="validation checks without a better NLL")
    opt.add_argument("--evals-per-epoch", type=int, default=d.evals_per_epoch, help="validation checks per epoch")
    opt.add_argument("--seed", type=int, default=d.seed, help="initialisation and shuffling seed")
    opt.add_argument("--device", default=d.device)
    mc = parser.add_argument_group("Monte Carlo")
    mc.add_argument("--n-samples", type=int, default=d.n_samples, help="default MC samples stored in the checkpoint")
    mc.add_argument("--eval-seed", type=int, default=d.eval_seed, help="seed of the MC masks for calibration/eval")
    mc.add_argument("--temperature-scaling", action=argparse.BooleanOptionalAction, default=True)
    shift = parser.add_argument_group("generalisation")
    shift.add_argument("--ensemble-size", type=int, default=d.ensemble_size, help="members, N samples spread over them")
    shift.add_argument(
        "--lexicon-prior", action="store_true", help="fixed valence-lexicon features per token (vaderSentiment)"
    )
    shift.add_argument(
        "--distill-from", default=None, help="a trained checkpoint whose MC probabilities are soft targets"
    )
    shift.add_argument("--distill-weight", type=float, default=d.distill_weight, help="share of the soft targets")
    shift.add_argument(
        "--subword-buckets",
        type=int,
        default=d.subword_buckets,
        help="hashed character 3-5-grams of each token (mlp: in the bag; gru: added to its word's embedding)",
    )
    shift.add_argument("--bag-skip", action="store_true", help="gru: pool the step inputs' mean beside the states")
    shift.add_argument(
        "--token-dropout", type=float, default=d.token_dropout, help="drop tokens (not their prior) in training only"
    )


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Turn parsed flags into options, filling architecture-dependent defaults."""
    fields = {k: v for k, v in vars(args).items() if k in TrainOptions.__dataclass_fields__}
    if fields.get("ngram_max") is None:
        fields["ngram_max"] = 2 if args.architecture == "mlp" else 1
    n_linear = len(args.hidden_dims) + 1
    if fields.get("dropout_p") is None:
        fields["dropout_p"] = [0.5] * n_linear
    elif len(fields["dropout_p"]) == 1:
        fields["dropout_p"] = fields["dropout_p"] * n_linear
    return TrainOptions(**fields)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop train``: prints the test metrics as JSON."""
    out = train(options_from_args(args))
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"checkpoint": str(out), **report.get("summary", {})}, indent=2))
    return 0
