"""Peak memory of `qat train` on a corpus much larger than its model: the token streams must
be streamed and memory-mapped, not held in RAM.

Builds GB gigabytes of real text (the packaged fixture text of scripts/setup_text_fixtures.sh,
repeated as numbered files of about 2.7 MB, one document per paragraph), a small random decoder
with SmolLM2's tokenizer (saved by transformers), and runs `qat train recipes/hf_text.yaml` on
it for a few QAT steps under /usr/bin/time -v: once with data.type text (tokenizing into the
cache), once more from the cache, and once with data.type tokens on a uint16 file of the same
number of tokens. Prints peak RSS against the corpus size.

usage: corpus_rss.py PATH/TO/qat RECIPES_DIR [GB] [WORK_DIR]
"""
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

CACHE = os.environ.get("QAT_CACHE", os.path.expanduser("~/.cache/qat"))
TEXT = os.path.join(CACHE, "data", "text")
SMOLLM2_HF = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct-hf")


def tiny_model(folder):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(SMOLLM2_HF, name), folder)


def write_corpus(folder, gigabytes):
    os.makedirs(folder, exist_ok=True)
    base = "".join(open(os.path.join(TEXT, f), encoding="utf-8").read()
                   for f in sorted(os.listdir(TEXT)) if f.endswith(".txt"))
    total, i = 0, 0
    while total < gigabytes * 1e9:
        text = f"Copy {i}.\n\n" + base
        with open(os.path.join(folder, f"part{i:05}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        total += len(text.encode())
        i += 1
    return total, i


def peak_rss(qat, recipes, run_dir, *overrides):
    start = time.time()
    done = subprocess.run(["/usr/bin/time", "-v", qat, "train",
                           os.path.join(recipes, "hf_text.yaml"), f"run.dir={run_dir}",
                           "trainer.stages=[float,qat]", "trainer.qat.steps=4",
                           "trainer.qat.schedule.warmup=0", "trainer.qat.float_baseline=false",
                           "trainer.calibration_batches=1", "data.eval_windows=2",
                           "data.context=128", "eval.multiple_choice=[]",
                           "trainer.checkpoint.every=0", *overrides],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"qat train failed: {done.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    data = [line for line in done.stdout.splitlines() if line.startswith("data:")]
    return kb / 1024, time.time() - start, data


def main(qat, recipes, gigabytes="2", work="/tmp/qat-corpus-rss"):
    gigabytes = float(gigabytes)
    os.makedirs(work, exist_ok=True)
    model = os.path.join(work, "tiny")
    if not os.path.exists(os.path.join(model, "config.json")):
        tiny_model(model)
    corpus = os.path.join(work, "corpus")
    size, files = write_corpus(corpus, gigabytes)
    print(f"corpus: {size / 1e9:.2f} GB of text in {files} files at {corpus}")
    rows = []
    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
    for i, label in enumerate(("text, first run (tokenizes unless cached)", "text, from the cache")):
        mib, seconds, data = peak_rss(qat, recipes, os.path.join(work, "runs", str(i)),
                                      f"model.path={model}", "data.type=text",
                                      f"data.path={corpus}", "data.documents=paragraphs")
        rows.append((label, mib, seconds))
        print("\n".join(data[-2:]))
    tokens = os.path.join(work, "tokens.bin")
    count = int(size / 4)  # about as many tokens as the text gives
    np.random.default_rng(0).integers(3, 49152, count, dtype=np.uint16).tofile(tokens)
    mib, seconds, data = peak_rss(qat, recipes, os.path.join(work, "runs", "tokens"),
                                  f"model.path={model}",
                                  "data.type=tokens", f"data.path={tokens}",
                                  "+data.dtype=uint16")
    rows.append((f"tokens ({count / 1e6:.0f}M uint16)", mib, seconds))
    print(f"\n| corpus ({size / 1e9:.2f} GB of text) | peak RSS | wall |\n|---|---|---|")
    for label, mib, seconds in rows:
        print(f"| {label} | {mib:.0f} MiB | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
