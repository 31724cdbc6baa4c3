"""Your model on your data, end to end, against transformers.

Fixtures are built here by transformers itself: a small random LlamaForCausalLM with
SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja,
from the Hugging Face folder scripts/setup.sh builds), saved with save_pretrained.

1. Chat data: `conformance_tool tokenize-data chat` ids and loss mask per conversation
   equal transformers' (apply_chat_template(tokenize=False) tokenized by the HF
   tokenizer, then EOS; the mask from the character spans that the template renders for
   each assistant turn, found as transformers renders prefixes of the conversation), for
   SmolLM2's template and for a Qwen2.5-style and a Llama-3-style template.
2. Multiple choice: per-choice log-likelihoods of the real SmolLM2 (HF folder) equal
   transformers' within 1e-4.
3. `qat train` on the random model with data.type text, jsonl, chat and tokens: every type
   trains and evaluates; the text run exports a compressed-tensors folder that
   AutoTokenizer and AutoModelForCausalLM load from the folder alone, and a GGUF file that
   llama.cpp loads with the same tokenization and chat template.
4. SmolLM2: the same perplexity through model.type hf as through model.type gguf.
5. Bad input: each a one-line error naming the file (and line or key), exit 1.

usage: test_hf_data.py PATH/TO/conformance_tool PATH/TO/qat RECIPES_DIR
"""
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from conformance import report
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

logging.disable_progress_bar()
logging.set_verbosity_error()

CACHE = os.environ.get("QAT_CACHE", os.path.expanduser("~/.cache/qat"))
SMOLLM2_HF = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct-hf")
TEXT = os.path.join(CACHE, "data", "text")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]

QWEN_STYLE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_STYLE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|im_start|>' + message['role'] + '<|im_end|>\\n\\n' + "
    "message['content'] | trim + '<|endoftext|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\\n\\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Name two rivers in Germany."},
     {"role": "assistant", "content": "The Rhine and the Elbe."},
     {"role": "user", "content": "And one in Russia?"},
     {"role": "assistant", "content": "  The Volga, 3 530 km long.\n"}],
    [{"role": "user", "content": "Übersetze: good morning"},
     {"role": "assistant", "content": "Guten Morgen! (おはよう)"}],
]


def run(*args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def tiny_model(folder, template=None):
    """A random decoder with SmolLM2's tokenizer, saved by transformers."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(SMOLLM2_HF, name), folder)
    if template is not None:
        with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
            f.write(template)
    return folder


def expected_chat(tokenizer, messages):
    """ids and mask per conversation, from transformers' renderings."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            begin = len(tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                                      add_generation_prompt=True)
                        if i else "")
            end = len(tokenizer.apply_chat_template(messages[:i + 1], tokenize=False))
            spans.append((begin, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"] + [tokenizer.eos_token_id]
    trained = [int(any(b <= s and e <= end for b, end in spans))
               for s, e in encoded["offset_mapping"]] + [0]
    return ids, trained


def check_chat(tool, tmp, failures):
    checks = 0
    data = os.path.join(tmp, "chat.jsonl")
    with open(data, "w") as f:
        for c in CONVERSATIONS:
            f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
    for name, template in (("smollm2", None), ("qwen-style", QWEN_STYLE),
                           ("llama3-style", LLAMA3_STYLE)):
        folder = tiny_model(os.path.join(tmp, "chat-" + name), template)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        out = os.path.join(tmp, name + ".jsonl")
        done = run(tool, "tokenize-data", "chat", data, folder, out)
        checks += 1
        if done.returncode:
            failures.append(f"chat {name}: {done.stderr.strip()}")
            continue
        with open(out) as f:
            got = [json.loads(line) for line in f]
        for i, messages in enumerate(CONVERSATIONS):
            checks += 1
            ids, trained = expected_chat(tokenizer, messages)
            if got[i]["ids"] != ids or got[i]["trained"] != trained:
                failures.append(f"chat {name} conversation {i}: ids/mask differ from "
                                f"transformers ({len(got[i]['ids'])} vs {len(ids)} ids)")
            else:
                print(f"chat {name} conversation {i}: {len(ids)} ids, "
                      f"{sum(trained)} trained, as transformers")
    return checks


def check_multiple_choice(tool, tmp, failures):
    task = os.path.join(tmp, "cloze.jsonl")
    source = os.path.join(CACHE, "data", "english_cloze.jsonl")
    with open(source) as f, open(task, "w") as out:
        examples = [json.loads(line) for line in f][:8]
        for e in examples:
            out.write(json.dumps(e) + "\n")
    result = os.path.join(tmp, "ll.json")
    done = run(tool, "multiple-choice", SMOLLM2_HF, task, result)
    if done.returncode:
        failures.append(f"multiple-choice: {done.stderr.strip()}")
        return 1
    with open(result) as f:
        ours = json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_HF)
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2_HF, dtype=torch.float32).eval()
    worst = 0.0
    for e, got in zip(examples, ours):
        context = tokenizer(e["context"], add_special_tokens=False)["input_ids"]
        for choice, value in zip(e["choices"], got):
            cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[:, :-1]).logits.double(), -1)[0]
            want = logp[-len(cont):].gather(1, torch.tensor(cont)[:, None]).sum().item()
            worst = max(worst, abs(value - want))
    print(f"multiple choice: {len(examples)} examples, worst |log-likelihood difference| "
          f"{worst:.2g}")
    if worst > 1e-4:
        failures.append(f"multiple-choice log-likelihoods differ by {worst:.3g} > 1e-4")
    return 1


def train(qat, recipes, run_dir, *overrides):
    return run(qat, "train", os.path.join(recipes, "hf_text.yaml"), f"run.dir={run_dir}",
               "trainer.qat.steps=2", "trainer.qat.schedule.warmup=0", "trainer.calibration_batches=1", "data.eval_windows=2",
               "data.context=64", "trainer.checkpoint.every=0", *overrides)


def check_training(qat, recipes, tmp, failures):
    checks = 0
    model = tiny_model(os.path.join(tmp, "tiny"))
    docs = os.path.join(tmp, "docs")
    os.makedirs(docs)
    with open(os.path.join(TEXT, "english.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()[:3000]
    for i in range(30):
        with open(os.path.join(docs, f"doc{i:02}.txt"), "w") as f:
            f.write("\n".join(lines[i * 100:(i + 1) * 100]) + "\n")
    jsonl = os.path.join(tmp, "docs.jsonl.gz")
    with gzip.open(jsonl, "wt") as f:
        for i in range(30):
            f.write(json.dumps({"body": "\n".join(lines[i * 100:(i + 1) * 100])}) + "\n")
    chats = os.path.join(tmp, "chats.jsonl")
    with open(chats, "w") as f:
        for i in range(40):
            c = CONVERSATIONS[i % len(CONVERSATIONS)]
            f.write(json.dumps({"messages": c + [{"role": "user", "content": lines[i]},
                                                 {"role": "assistant",
                                                  "content": lines[i + 1]}]}) + "\n")
    tokens = os.path.join(tmp, "tokens.bin")
    rng = np.random.default_rng(0)
    stream = rng.integers(3, 49152, 20000).astype(np.uint16)
    stream[::200] = 2  # EOS between documents
    stream.tofile(tokens)
    cloze = os.path.join(CACHE, "data", "english_cloze.jsonl")
    small_cloze = os.path.join(tmp, "cloze.jsonl")
    with open(cloze) as f, open(small_cloze, "w") as out:
        out.writelines(f.readlines()[:10])
    cases = {
        "text": ["data.type=text", f"data.path={docs}", "data.documents=file",
                 "data.held_out=0.2", f"eval.multiple_choice=[{small_cloze}]"],
        "jsonl": ["data.type=jsonl", f"data.path={jsonl}", "+data.text_field=body",
                  "data.held_out=0.2", "eval.multiple_choice=[]",
                  "trainer.stages=[float,ptq,eval]"],
        "chat": ["data.type=chat", f"data.path={chats}", "data.held_out=0.2",
                 "eval.multiple_choice=[]", "trainer.stages=[float,ptq,eval]"],
        "tokens": ["data.type=tokens", f"data.path={tokens}", "+data.dtype=uint16",
                   "eval.multiple_choice=[]", "trainer.stages=[float,ptq,eval]"],
    }
    for name, overrides in cases.items():
        run_dir = os.path.join(tmp, "run-" + name)
        done = train(qat, recipes, run_dir, f"model.path={model}", *overrides)
        checks += 1
        if done.returncode:
            failures.append(f"train {name}: exit {done.returncode}: "
                            f"{(done.stderr or done.stdout).strip()[-800:]}")
            continue
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        names = [r["name"] for r in summary]
        print(f"train {name}: {names}, test perplexity "
              f"{[round(r['test']['perplexity'], 1) for r in summary]}")
        if name == "text":
            checks += 2
            if "float fine-tuned" not in names:
                failures.append(f"train text: no float fine-tuned baseline in {names}")
            if "cloze acc" not in summary[0]["test"]:
                failures.append("train text: no multiple-choice accuracy in the summary")
            checks += check_exports(run_dir, model, failures)
    return checks


def check_exports(run_dir, model, failures):
    """The compressed-tensors folder loads in transformers from the folder alone."""
    folder = os.path.join(run_dir, "export", "w8a8")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder)
        reference = AutoTokenizer.from_pretrained(model)
        text = "In the beginning God created the heaven and the earth. 1234"
        ids = tokenizer(text)["input_ids"]
        if ids != reference(text)["input_ids"]:
            failures.append("export: the exported tokenizer tokenizes differently")
        with torch.no_grad():
            logits = lm(torch.tensor([ids])).logits
        if not torch.isfinite(logits).all():
            failures.append("export: non-finite logits from the exported folder")
        print(f"export: {folder} loads in transformers ({type(lm).__name__}), "
              f"{len(ids)} ids as the source tokenizer")
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        failures.append(f"export: transformers cannot load {folder}: {e}")
    return 1


def check_gguf_export(qat, recipes, tmp, failures):
    model = os.path.join(tmp, "tiny")
    docs = os.path.join(tmp, "docs")
    run_dir = os.path.join(tmp, "run-gguf")
    done = train(qat, recipes, run_dir, f"model.path={model}", "data.type=text",
                 f"data.path={docs}", "data.documents=file", "data.held_out=0.2",
                 "eval.multiple_choice=[]",
                 "trainer.ptq.schemes=[q4_0]", "trainer.qat.schemes=[q4_0]",
                 "export.format=gguf", "export.schemes=[q4_0]")
    if done.returncode:
        failures.append(f"gguf export: {(done.stderr or done.stdout).strip()[-600:]}")
        return 1
    from llama_cpp import Llama
    path = os.path.join(run_dir, "export", "q4_0.gguf")
    llm = Llama(model_path=path, verbose=False, n_ctx=64)
    reference = AutoTokenizer.from_pretrained(model)
    checks = 0
    for text in ["In the beginning God created the heaven and the earth.",
                 "Zahlen 12345 und Umlaute: äöü", "<|im_start|>user\nhi<|im_end|>\n"]:
        checks += 1
        got = llm.tokenize(text.encode(), add_bos=False, special=True)
        want = reference(text, add_special_tokens=False)["input_ids"]
        if got != want:
            failures.append(f"gguf export: llama.cpp tokenizes {text!r} as {got[:12]}, "
                            f"transformers as {want[:12]}")
    checks += 1
    template = llm.metadata.get("tokenizer.chat_template", "")
    with open(os.path.join(model, "chat_template.jinja")) as f:
        if template != f.read():
            failures.append("gguf export: tokenizer.chat_template is missing or differs")
    print(f"gguf export: llama.cpp loads {path}, tokenizes as transformers, chat template kept")
    return checks


def check_gguf_vs_hf(qat, recipes, tmp, failures):
    values = {}
    for kind, path in (("gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                       ("hf", "SmolLM2-135M-Instruct-hf")):
        run_dir = os.path.join(tmp, "ppl-" + kind)
        done = run(qat, "train", os.path.join(recipes, "smollm2.yaml"), f"run.dir={run_dir}",
                   f"model.type={kind}", f"model.path={path}", "trainer.stages=[float,eval]",
                   "data.eval_windows=2", "trainer.sample.prompt=")
        if done.returncode:
            failures.append(f"smollm2 {kind}: {(done.stderr or done.stdout).strip()[-600:]}")
            return 1
        with open(os.path.join(run_dir, "summary.json")) as f:
            values[kind] = json.load(f)[0]["test"]["perplexity"]
    rel = abs(values["hf"] - values["gguf"]) / values["gguf"]
    print(f"SmolLM2 test perplexity: gguf {values['gguf']:.6f}, hf {values['hf']:.6f} "
          f"(relative difference {rel:.2g})")
    if rel > 1e-5:
        failures.append(f"SmolLM2 perplexity hf {values['hf']} != gguf {values['gguf']}")
    return 1


def check_refusals(qat, recipes, tmp, failures):
    model = os.path.join(tmp, "tiny")
    bad = os.path.join(tmp, "bad")
    os.makedirs(bad)

    def write(name, content, mode="w"):
        path = os.path.join(bad, name)
        with open(path, mode) as f:
            f.write(content)
        return path

    many = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(40))
    broken = write("broken.jsonl", many + "{not json\n")
    field = write("field.jsonl", many + '{"body": 1}\n')
    nomsg = write("nomsg.jsonl", '{"turns": []}\n')
    role = write("role.jsonl",
                 json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n")
    empty = write("empty.txt", "")
    short = write("short.jsonl", many)
    latin1 = write("latin1.txt", b"caf\xe9\n", "wb")
    cases = [
        ("invalid JSON line", ["data.type=jsonl", f"data.path={broken}"],
         "broken.jsonl:41: not a JSON line"),
        ("missing text field", ["data.type=jsonl", f"data.path={field}"],
         "field.jsonl:41: no string field 'text'"),
        ("missing messages", ["data.type=chat", f"data.path={nomsg}"],
         "nomsg.jsonl:1: no 'messages' list"),
        ("unknown role", ["data.type=chat", f"data.path={role}"],
         "role.jsonl:1: messages[0]: unknown role 'wizard'"),
        ("empty dataset", ["data.type=text", f"data.path={empty}"],
         "no documents"),
        ("fewer tokens than a window", ["data.type=jsonl", f"data.path={short}",
                                        "data.held_out=0.5", "data.context=500"],
         "data.context"),
        ("non-UTF-8", ["data.type=text", "data.documents=file", f"data.path={latin1}"],
         "latin1.txt:1: invalid UTF-8 (byte 0xE9)"),
        ("context beyond max_position_embeddings", ["data.type=text", "data.context=4096",
                                                    f"data.path={TEXT}"],
         "max_position_embeddings (512)"),
        ("no such path", ["data.type=text", f"data.path={bad}/nothing-*.txt"],
         "names no file"),
        ("unknown data type", ["data.type=parquet", f"data.path={TEXT}"],
         "unknown data type 'parquet'"),
        ("unknown documents option", ["data.type=text", "data.documents=pages",
                                      f"data.path={TEXT}"],
         "data.documents: 'pages' is neither file nor paragraphs"),
        ("unknown token width", ["data.type=tokens", "+data.dtype=int8", f"data.path={TEXT}"],
         "data.dtype: 'int8' is neither uint16 nor uint32"),
    ]
    unigram = os.path.join(tmp, "unigram")
    shutil.copytree(model, unigram)
    with open(os.path.join(unigram, "tokenizer.json")) as f:
        spec = json.load(f)
    spec["model"]["type"] = "Unigram"
    with open(os.path.join(unigram, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    cases.append(("unsupported tokenizer", [f"model.path={unigram}", "data.type=text",
                                            f"data.path={TEXT}"],
                  "model.type 'Unigram' is not supported"))
    checks = 0
    for name, overrides, expected in cases:
        run_dir = os.path.join(tmp, "refused")
        shutil.rmtree(run_dir, ignore_errors=True)
        done = run(qat, "train", os.path.join(recipes, "hf_text.yaml"), f"run.dir={run_dir}",
                   f"model.path={model}", "eval.multiple_choice=[]", "data.held_out=0.2",
                   *overrides)
        checks += 1
        lines = done.stderr.strip().splitlines()
        if done.returncode != 1 or len(lines) != 1 or expected not in lines[0]:
            failures.append(f"refusal '{name}': exit {done.returncode}, stderr "
                            f"{done.stderr.strip()[-400:]!r}; expected one line with {expected!r}")
        elif os.path.exists(os.path.join(run_dir, "checkpoints")):
            failures.append(f"refusal '{name}': wrote checkpoints")
        else:
            print(f"refusal '{name}': {lines[0]}")
    return checks


def main(tool, qat, recipes) -> int:
    failures = []
    if not os.path.exists(os.path.join(SMOLLM2_HF, "tokenizer.json")):
        print(f"FAILED: {SMOLLM2_HF} is missing: run scripts/setup.sh")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        checks = check_chat(tool, tmp, failures)
        checks += check_multiple_choice(tool, tmp, failures)
        checks += check_training(qat, recipes, tmp, failures)
        checks += check_gguf_export(qat, recipes, tmp, failures)
        checks += check_refusals(qat, recipes, tmp, failures)
        checks += check_gguf_vs_hf(qat, recipes, tmp, failures)
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
