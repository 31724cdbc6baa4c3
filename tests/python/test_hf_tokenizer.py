#!/usr/bin/env python3
"""qat::text::HfTokenizer against Hugging Face `tokenizers` (the oracle), bit for bit.

  test_hf_tokenizer.py TEXT_TOOL

Trains small BPE tokenizers with `tokenizers` itself (no hub) on part of the Debian text
fixtures (scripts/setup_text_fixtures.sh), each with a real model family's exact
configuration, writes tokenizer.json + tokenizer_config.json, and requires `text_tool tokenize`
to give the ids HF gives for all fixture text (whole files and random chunks, with and without
add_special_tokens, with added tokens written in the text, a sweep over all of Unicode), the
same decode, and decode(encode(x)) == x where the tokenizer is lossless. Also the real SmolLM2
tokenizer when ~/.cache/qat/models/SmolLM2-135M-Instruct-hf/tokenizer.json exists, and bad
inputs (one-line error, exit code 1).
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance import report  # noqa: E402

from tokenizers import Regex, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("QAT_CACHE", os.path.expanduser("~/.cache/qat"))
TEXT_DIR = os.path.join(CACHE, "data", "text")
SMOLLM2 = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct-hf")

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}")

failures: list[str] = []
checks = 0


def fixtures() -> dict:
    if not os.path.exists(os.path.join(TEXT_DIR, ".complete-v1")):
        subprocess.run([os.path.join(ROOT, "scripts", "setup_text_fixtures.sh")], check=True)
    out = {}
    for name in sorted(os.listdir(TEXT_DIR)):
        if name.endswith(".txt"):
            with open(os.path.join(TEXT_DIR, name), encoding="utf-8") as f:
                out[name] = f.read()
    return out


def training_text(texts: dict) -> list:
    lines = []
    for t in texts.values():
        part = t[: len(t) // 4]
        lines += part.splitlines(keepends=True)
    return lines


def save(tok: Tokenizer, folder: str, config: dict, edit=None) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    if edit:
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        edit(j)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder


def byte_level(lines, pre, specials, vocab=8000):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return tok


def build(tmp: str, lines) -> dict:
    out = {}
    # SmolLM2: Digits(individual) + ByteLevel(add_prefix_space=False), ByteLevel post-processor.
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]),
        specials)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out["smollm2-like"] = save(tok, os.path.join(tmp, "smollm2"), {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "add_bos_token": False, "chat_template": CHAT})

    # Llama 3: Split(regex) + ByteLevel(use_regex=False), <|begin_of_text|> template,
    # ignore_merges, 20 reserved special tokens.
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                "<|start_header_id|>", "<|end_header_id|>"] + [
                    f"<|reserved_special_token_{i}|>" for i in range(20)]
    tok = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        specials, vocab=12000)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])

    def llama3_edit(j):
        j["model"]["ignore_merges"] = True
    out["llama3-like"] = save(tok, os.path.join(tmp, "llama3"), {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, llama3_edit)

    # Qwen2: its Split regex, ByteLevel post-processor, no BOS; plus non-special added tokens
    # with lstrip / rstrip / single_word (as Qwen2.5's <tool_call> ...).
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        specials, vocab=10000)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False),
                    AddedToken("[LSTRIP]", lstrip=True, normalized=False),
                    AddedToken("[RSTRIP]", rstrip=True, normalized=False),
                    AddedToken("word", single_word=True, normalized=False),
                    AddedToken("the", normalized=True)])
    out["qwen2-like"] = save(tok, os.path.join(tmp, "qwen2"), {
        "bos_token": None, "eos_token": "<|im_end|>", "chat_template": CHAT})

    # GPT-2: ByteLevel(add_prefix_space=False) alone, Split with the GPT-2 regex as well.
    tok = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)]),
        ["<|endoftext|>"], vocab=6000)
    out["gpt2-like"] = save(tok, os.path.join(tmp, "gpt2"), {"eos_token": "<|endoftext|>"})

    # SentencePiece-style BPE (Llama 2 / Mistral v0.1 / TinyLlama): byte fallback, fused unk,
    # Prepend + Replace normalizer, no pre-tokenizer, <s> template; a limited alphabet so that
    # rare characters go through <0xXX>. Trained with Metaspace, which is then removed.
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never",
                                                 split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=8000, show_progress=False, limit_alphabet=400,
                                  special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens)
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])

    def sp_edit(j):
        j["pre_tokenizer"] = None
        j["added_tokens"] = [a for a in j["added_tokens"] if a["content"] in ("<unk>", "<s>", "</s>")]
    out["llama2-like"] = save(tok, os.path.join(tmp, "llama2"), {
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False},
        sp_edit)

    # The same model the way newer conversions write it: Metaspace(prepend_scheme=first,
    # split=false) pre-tokenizer and decoder, no normalizer, merges as pairs.
    def ms_edit(j):
        sp_edit(j)
        j["normalizer"] = None
        j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                              "split": False}
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
        j["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m
                                for m in j["model"]["merges"]]
    out["metaspace-like"] = save(tok, os.path.join(tmp, "metaspace"), {
        "bos_token": "<s>", "eos_token": "</s>"}, ms_edit)
    return out


def chunks(text: str, rng: random.Random, n: int) -> list:
    out = []
    for _ in range(n):
        a = rng.randrange(len(text))
        out.append(text[a:a + rng.choice([1, 2, 5, 17, 80, 300, 1500])])
    return out


def unicode_sweep(rng: random.Random) -> str:
    cps = [c for c in range(0x20, 0x32400) if not 0xD800 <= c <= 0xDFFF]
    rng.shuffle(cps)
    seps = [" ", "  ", "'", "'s", "1", "a", "\n", "\t", "", "", "", ""]
    parts = []
    for i in range(0, len(cps), 3):
        parts.append("".join(chr(c) for c in cps[i:i + 3]) + rng.choice(seps))
    return "".join(parts)


EDGE = ["", " ", "  ", "a", " a", "  hello", "hello  ", "\n", "\n\n\t x", " \r\n \r\n  y",
        "'s 'S 'll 'LL 'Re 'ſ 've'd'm't", "don't I'M WE'LL", "12345678901", " 1 22 333 4444",
        "a\u00a0b\u3000c\u2028d\u0085e", "x\u200by", "tab\t\tend\t", "ünïcödé façade", "日本語のテキスト",
        "Привет, мир!", "emoji 👍🏽 and 🇩🇪", "\u017f\u212a", "   \n   ", "end with space ",
        "<|im_start|>user\nHi<|im_end|>", "a<|endoftext|>b", "<|begin_of_text|><|eot_id|>",
        "x <tool_call>{\"a\": 1}</tool_call> y", "a   [LSTRIP] b", "a [RSTRIP]   b",
        "word words sword word", " the theme", "<s> a </s>", "<unk>", "<0x41>"]


def compare(name: str, tool: str, folder: str, texts: dict, rng: random.Random,
            lossless: bool) -> None:
    global checks
    hf = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    specials = [t.content for t in hf.get_added_tokens_decoder().values()]
    cases = []  # (label, text, add_special)
    for fname, text in texts.items():
        cases.append((f"{fname} whole", text, False))
        for k, c in enumerate(chunks(text, rng, 60)):
            cases.append((f"{fname} chunk {k}", c, k % 2 == 1))
        pieces = chunks(text, rng, 20)
        mixed = "".join(p + rng.choice(specials) for p in pieces)
        cases.append((f"{fname} with added tokens", mixed, True))
    for k, e in enumerate(EDGE):
        cases.append((f"edge {k} {e!r}", e, False))
        cases.append((f"edge {k} {e!r} special", e, True))
    cases.append(("unicode sweep", unicode_sweep(rng), False))

    reqs = "".join(json.dumps({"text": t, "add_special_tokens": s}) + "\n" for _, t, s in cases)
    r = subprocess.run([tool, "tokenize", "batch", folder], input=reqs.encode(),
                       capture_output=True)
    if r.returncode != 0:
        failures.append(f"{name}: text_tool batch failed: {r.stderr.decode(errors='replace')}")
        return
    answers = [json.loads(line) for line in r.stdout.decode().split("\n") if line]
    for (label, text, special), ans in zip(cases, answers):
        checks += 1
        want = hf.encode(text, add_special_tokens=special).ids
        got = ans["ids"]
        if got != want:
            dump = os.environ.get("QAT_TOKENIZER_DUMP")  # a folder for the failing texts
            if dump:
                with open(os.path.join(dump, f"{name}-{len(failures)}.txt"), "w") as f:
                    f.write(text)
            i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
                     min(len(got), len(want)))
            ctx = hf.decode(want[max(0, i - 3):i + 3])
            failures.append(f"{name} / {label}: ids differ at {i} of {len(want)}: qat "
                            f"{got[max(0, i - 3):i + 4]} vs HF {want[max(0, i - 3):i + 4]} "
                            f"(HF tokens {[hf.id_to_token(t) for t in want[max(0, i - 3):i + 4]]}, "
                            f"text near {ctx!r})")
            continue
        checks += 1
        want_text = hf.decode(want, skip_special_tokens=False)
        if ans["decoded"] != want_text:
            failures.append(f"{name} / {label}: decode differs: {ans['decoded'][:80]!r} vs HF "
                            f"{want_text[:80]!r}")
        elif lossless and not special and "STRIP]" not in text and want_text != text:
            failures.append(f"{name} / {label}: decode(encode(x)) != x")
    if len(answers) != len(cases):
        failures.append(f"{name}: {len(answers)} answers for {len(cases)} requests")

    # Metadata against HF.
    checks += 1
    info = json.loads(subprocess.run([tool, "tokenize", "info", folder], capture_output=True,
                                     check=True).stdout)
    want_size = max(hf.get_vocab(with_added_tokens=True).values()) + 1
    if info["vocab_size"] != want_size:
        failures.append(f"{name}: vocab_size {info['vocab_size']} vs HF {want_size}")
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    for key, tid in (("bos_token", info["bos_id"]), ("eos_token", info["eos_id"])):
        tokname = cfg.get(key)
        if isinstance(tokname, dict):
            tokname = tokname["content"]
        if tokname and hf.token_to_id(tokname) != tid:
            failures.append(f"{name}: {key} id {tid} vs HF {hf.token_to_id(tokname)}")
    print(f"  {name}: {len(cases)} texts, {sum(len(t.encode()) for _, t, _ in cases)} bytes, "
          f"ggml {info['ggml_model']}/{info['ggml_pre']}, vocab {info['vocab_size']}")


def bad_inputs(tool: str, tmp: str, good: str) -> None:
    global checks
    with open(os.path.join(good, "tokenizer.json"), encoding="utf-8") as f:
        base = json.load(f)

    def variant(name, edit):
        j = json.loads(json.dumps(base))
        edit(j)
        path = os.path.join(tmp, f"bad-{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f)
        return path

    def unigram(j):
        j["model"]["type"] = "Unigram"

    def regex(j):
        j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|[^\w\s]+"

    def nfkc(j):
        j["normalizer"] = {"type": "NFKC"}

    def merge(j):
        j["model"]["merges"][0] = "notatoken alsonot"
    malformed = os.path.join(tmp, "bad-malformed.json")
    with open(malformed, "w") as f:
        f.write('{"version": "1.0", "model": {"type": "BPE", vocab: ')
    cases = [("Unigram", variant("unigram", unigram), ["model.type", "Unigram"]),
             ("unknown regex", variant("regex", regex), ["pre_tokenizer.pretokenizers[0].pattern",
                                                         r"\w+|[^\w\s]+"]),
             ("NFKC", variant("nfkc", nfkc), ["normalizer.type", "NFKC"]),
             ("bad merge", variant("merge", merge), ["model.merges[0]"]),
             ("malformed JSON", malformed, ["malformed JSON"]),
             ("missing file", os.path.join(tmp, "no-such", "tokenizer.json"), ["cannot open"])]
    for label, path, needles in cases:
        checks += 1
        r = subprocess.run([tool, "tokenize", "encode", path, "--text", "hello"],
                           capture_output=True)
        err = r.stderr.decode(errors="replace")
        lines = err.strip().splitlines()
        if r.returncode != 1 or len(lines) != 1 or not all(n in err for n in needles) \
                or path not in err:
            failures.append(f"bad input {label}: rc {r.returncode}, stderr {err!r} "
                            f"(want exit 1, one line naming {path} and {needles})")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    tool = os.path.abspath(sys.argv[1])
    start = time.time()
    texts = fixtures()
    rng = random.Random(0)
    total = sum(len(t.encode()) for t in texts.values())
    print(f"fixtures: {len(texts)} files, {total} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        toks = build(tmp, training_text(texts))
        print(f"trained {len(toks)} tokenizers in {time.time() - start:.1f} s")
        for name, folder in toks.items():
            compare(name, tool, folder, texts, rng,
                    lossless=name not in ("llama2-like", "metaspace-like", "gpt2-like"))
        if os.path.exists(os.path.join(SMOLLM2, "tokenizer.json")):
            compare("SmolLM2-135M-Instruct", tool, SMOLLM2, texts, rng, lossless=True)
        else:
            print(f"  SKIPPED the real SmolLM2 tokenizer: {SMOLLM2}/tokenizer.json is absent")
        bad_inputs(tool, tmp, toks["llama3-like"])
    print(f"took {time.time() - start:.1f} s")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main())
