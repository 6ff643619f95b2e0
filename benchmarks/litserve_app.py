"""LitServe servers to compare ``mcdrop serve`` with: the same engine behind LitServe, or the stack a user would
build without mcdrop (LitServe around baal's ``predict_on_batch`` on the same weights as a plain torch module).

Both answer ``POST /v1/predict`` with mcdrop's request body (``{"texts": [...], "n_samples": N}``; other fields
are ignored), batching up to ``--max-batch-size`` requests with a ``--batch-timeout`` (LitServe's own batching),
on one inference worker with ``--torch-threads`` threads (``mcdrop serve`` on two cores uses one):

* ``--stack mcdrop``: :meth:`MCEngine.predict_many` per batch, every statistic, mcdrop's JSON per text,
* ``--stack baal``: the checkpoint's tokenizer, ``predict_on_batch``, and per text the label, mean probabilities,
  entropy and mutual information computed with torch.

    python benchmarks/litserve_app.py --model models/rt-mlp --port 8123 [--stack mcdrop|baal]

Started by ``benchmarks/bench_litserve.py``; needs ``pip install -e '.[bench]'``. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks.peers

from benchmarks.peers import baal_runner, members_in_turn, padded_ids, plain_models
from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.engine import MCEngine, random_seed
from mcdrop.core.uncertainty import entropy
from mcdrop.serving.presentation import prediction_dict

Request = tuple[list[str], int]


class _Batched(ls.LitAPI):  # type: ignore[misc]
    """Shared request handling: a request is (texts, n_samples); a batch is a list of them."""

    def __init__(self, model: Path, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path, self.threads = model, threads

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe then reads JSON
        return list(request["texts"]), int(request.get("n_samples", 100))

    def batch(self, inputs: list[Request]) -> list[Request]:
        return inputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class EngineAPI(_Batched):
    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.engine = MCEngine(load_checkpoint(self.model_path), device="cpu")

    def predict(self, requests: list[Request]) -> list[dict[str, Any]]:
        out = []
        for n in sorted({n for _, n in requests}):  # like mcdrop's batcher: one engine call per sample count
            group = [i for i, (_, m) in enumerate(requests) if m == n]
            results = self.engine.predict_many([(requests[i][0], random_seed()) for i in group], n)
            out += [(i, {"predictions": [prediction_dict(p) for p in r]}) for i, r in zip(group, results, strict=True)]
        return [answer for _, answer in sorted(out, key=lambda item: item[0])]


class BaalAPI(_Batched):
    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.checkpoint = load_checkpoint(self.model_path)
        temperature = self.checkpoint.temperature
        self.run = members_in_turn([baal_runner(p, temperature) for p in plain_models(self.checkpoint)])

    def predict(self, requests: list[Request]) -> list[dict[str, Any]]:
        texts = [t for ts, _ in requests for t in ts]
        probs = self.run(padded_ids(self.checkpoint, texts), requests[0][1])  # (N, B, C); one N per batch
        mean = probs.mean(dim=0)
        total = entropy(mean)
        mi = (total - entropy(probs).mean(dim=0)).clamp_min(0.0)
        labels = self.checkpoint.labels
        rows = [
            {
                "label": labels[int(m.argmax())],
                "probs": dict(zip(labels, m.tolist(), strict=True)),
                "entropy": h,
                "mi": i,
            }
            for m, h, i in zip(mean, total.tolist(), mi.tolist(), strict=True)
        ]
        out, start = [], 0
        for ts, _ in requests:
            out.append({"predictions": rows[start : start + len(ts)]})
            start += len(ts)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stack", choices=["mcdrop", "baal"], default="mcdrop")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    api_class = EngineAPI if args.stack == "mcdrop" else BaalAPI
    api = api_class(
        args.model, args.torch_threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout
    )
    api.api_path = "/v1/predict"
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
