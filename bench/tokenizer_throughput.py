#!/usr/bin/env python3
"""Encode throughput of qat::text::HfTokenizer vs Hugging Face `tokenizers`, single-threaded.

  bench/tokenizer_throughput.py TEXT_TOOL [--rounds 5] [--tokenizer DIR]

Both encode the same text (all of scripts/setup_text_fixtures.sh's files, about 2.7 MB, in one
call) with the same tokenizer: the real SmolLM2 one when
~/.cache/qat/models/SmolLM2-135M-Instruct-hf exists, else a SmolLM2-style BPE trained here.
Rounds alternate qat / HF; each side's time is measured inside its own process around the
encode call alone (`text_tool tokenize bench`, Python's perf_counter), the median is kept.
HF runs with RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("QAT_CACHE", os.path.expanduser("~/.cache/qat"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("text_tool")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokenizer", default=os.path.join(CACHE, "models",
                                                         "SmolLM2-135M-Instruct-hf"))
    args = ap.parse_args()
    text_dir = os.path.join(CACHE, "data", "text")
    if not os.path.exists(os.path.join(text_dir, ".complete-v1")):
        subprocess.run([os.path.join(ROOT, "scripts", "setup_text_fixtures.sh")], check=True)
    text = "".join(open(os.path.join(text_dir, n), encoding="utf-8").read()
                   for n in sorted(os.listdir(text_dir)) if n.endswith(".txt"))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "text.txt")
        with open(data, "w", encoding="utf-8") as f:
            f.write(text)
        folder = args.tokenizer
        if not os.path.exists(os.path.join(folder, "tokenizer.json")):
            folder = os.path.join(tmp, "tok")
            os.makedirs(folder)
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False)])
            tok.decoder = decoders.ByteLevel()
            tok.train_from_iterator(text.splitlines(keepends=True), trainers.BpeTrainer(
                vocab_size=16000, special_tokens=["<|endoftext|>"], show_progress=False,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
            tok.save(os.path.join(folder, "tokenizer.json"))
            label = "SmolLM2-style BPE trained here (16k)"
        else:
            label = folder
        hf = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        nbytes = len(text.encode())
        qat_s, hf_s = [], []
        for _ in range(args.rounds):
            r = subprocess.run([args.text_tool, "tokenize", "bench", folder, data, "1"],
                               capture_output=True, check=True)
            got = json.loads(r.stdout)
            qat_s.append(got["seconds"][0])
            t0 = time.perf_counter()
            ids = hf.encode(text).ids
            hf_s.append(time.perf_counter() - t0)
            if got["tokens"] != len(ids):
                print(f"token counts differ: qat {got['tokens']} vs HF {len(ids)}")
                return 1
    q, h = statistics.median(qat_s), statistics.median(hf_s)
    print(f"tokenizer: {label}; text: {nbytes} bytes, {len(ids)} tokens; "
          f"median of {args.rounds} alternating rounds, one thread")
    print(f"qat  {nbytes / q / 1e6:7.2f} MB/s  ({q * 1e3:.0f} ms)")
    print(f"HF   {nbytes / h / 1e6:7.2f} MB/s  ({h * 1e3:.0f} ms)")
    print(f"ratio qat/HF: {h / q:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
