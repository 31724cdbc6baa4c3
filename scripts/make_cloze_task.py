"""A multiple-choice task in lm-eval's JSONL convention ({context, choices, label}) from real
text: lines of the English fixture text of scripts/setup_text_fixtures.sh (King James verses,
the Jargon File, fortunes), each cut after 60% of its words; the choices are its true ending
and the endings of three other lines. Deterministic (seed 0).

usage: make_cloze_task.py TEXT_FILE OUT.jsonl [COUNT]
"""
import json
import os
import random
import sys


def main(text: str, out: str, count: int = 200) -> int:
    with open(text, encoding="utf-8") as f:
        verses = [line.strip() for line in f.readlines()[:31102]]
    verses = [v for v in verses if 12 <= len(v.split()) <= 40]
    rng = random.Random(0)
    picked = rng.sample(range(len(verses)), count)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in picked:
            words = verses[i].split()
            cut = int(len(words) * 0.6)
            context, ending = " ".join(words[:cut]), " " + " ".join(words[cut:])
            others = []
            while len(others) < 3:
                j = rng.randrange(len(verses))
                w = verses[j].split()
                other = " " + " ".join(w[int(len(w) * 0.6):])
                if j != i and other != ending and other not in others:
                    others.append(other)
            label = rng.randrange(4)
            choices = others[:label] + [ending] + others[label:]
            f.write(json.dumps({"context": context, "choices": choices, "label": label}) + "\n")
    os.replace(tmp, out)
    print(f"[setup] {count} cloze questions from {text}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])))
