"""Bad recipe values are one-line errors that name the recipe file and the key, never a crash.

    python tests/python/test_recipe_values.py build/qat recipes/

1. The cases users met: data.batch_size=0 (was SIGFPE), trainer.calibration_batches=0 (was an
   op error with a C++ stack trace), model.hidden=[0], data.eval_batch_size=0, a defaults list
   naming one group twice, a required key deleted.
2. A sweep: every numeric key of the composed digits recipe (and the text keys of kjv.yaml), the
   quantization rules' included, set to 0, -1 and a huge value, through `qat train --check`
   (the recipe, the data, the model and every scheme prepared and calibrated on one batch). Each
   run either passes the check or exits 1 with exactly one line on stderr, `error: FILE...: KEY:
   why`, naming the recipe file and the key. No signal, no backtrace, no other exit code.
3. The values the sweep accepts at 0 and -1 run for real as a short job (every stage of the
   digits recipe, a few steps each): they finish, or stop with such a line, and nothing else.
"""
import concurrent.futures
import os
import subprocess
import sys
import tempfile

import yaml
from conformance import report

QAT = os.path.abspath(sys.argv[1])
RECIPES = os.path.abspath(sys.argv[2])
DIGITS = os.path.join(RECIPES, "digits.yaml")
KJV = os.path.join(RECIPES, "kjv.yaml")
HUGE_INT, HUGE_FLOAT = 2**31 - 1, 1e300
# A short job: every stage of the digits recipe, a few steps each.
SHORT = ["trainer.float.steps=4", "trainer.float.eval_every=0", "trainer.float.schedule.warmup=1",
         "trainer.qat.steps=4", "trainer.qat.eval_every=0", "trainer.qat.freeze_observers_at=2",
         "trainer.qat.freeze_bn_at=3", "trainer.checkpoint.every=2", "trainer.log_every=2",
         "trainer.calibration_batches=2", "+run.threads=1"]
WORK = tempfile.mkdtemp(prefix="qat_recipe_values_")
checks, failures = 0, []


def check(ok, what):
    global checks
    checks += 1
    if not ok:
        failures.append(what)
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def qat(*args, timeout=120):
    try:
        return subprocess.run([QAT, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, "timeout", e.stdout or "", e.stderr or "")


def clean_outcome(done, recipe, key):
    """'' if the run ended as a bad value must: done, or one `error:` line naming the recipe
    and the key; else what was wrong."""
    lines = [l for l in (done.stderr or "").splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    if "Exception raised from" in done.stderr or "frame #" in done.stderr:
        return "a C++ backtrace on stderr"
    if done.returncode == 0:
        return "" if not errors else f"exit 0 with an error line: {errors[0]}"
    if done.returncode != 1:
        return f"exit {done.returncode} (signal or crash), stderr: {done.stderr[-400:]}"
    # Progress lines and warnings may come first; the error is one line, the last.
    if len(errors) != 1 or lines[-1] != errors[0]:
        return f"not one error line at the end: {lines[-5:]}"
    if recipe not in errors[0] or key not in errors[0]:
        return f"the error names neither {os.path.basename(recipe)} nor {key}: {errors[0]}"
    return ""


def numeric_leaves(node, prefix=""):
    """(dotted key, value) of every int or float in a composed recipe, list items by index."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            yield key, v
        else:
            yield from numeric_leaves(v, key)


def composed(recipe):
    done = qat("train", recipe, "--print-config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


# -- 1. the cases users met --------------------------------------------------------------------

for override, key in [("data.batch_size=0", "data.batch_size"),
                      ("trainer.calibration_batches=0", "trainer.calibration_batches"),
                      ("model.hidden=[0]", "model.hidden.0"),
                      ("data.eval_batch_size=0", "data.eval_batch_size"),
                      ("data.batch_size=1000000", "data.batch_size"),
                      ("model.classes=5", "model.classes"),
                      ("data.validation=5000", "data.validation"),
                      ("+quant.w4a4.rules.1.weight.group_size=7", "quant.w4a4.rules.1.weight"),
                      ("quant.int8.rules.0.weight.bits=9", "quant.int8.rules.0.weight.bits"),
                      ("~run.dir", "run.dir")]:
    run_dir = os.path.join(WORK, "named_" + key)
    done = qat("train", DIGITS, *SHORT, f"run.dir={run_dir}" if override[0] != "~" else "run.name=x",
               override)
    why = clean_outcome(done, DIGITS, key)
    check(done.returncode == 1 and not why,
          f"{override}: one error line naming digits.yaml and {key}"
          + (f" ({why})" if why else f": {done.stderr.strip()}"))
    check(not os.path.exists(os.path.join(run_dir, "checkpoints")),
          f"{override}: stopped before training")

# A defaults list naming one group twice (Hydra refuses it too), in a copy of the recipes.
bad_dir = os.path.join(WORK, "recipes")
subprocess.run(["cp", "-r", RECIPES, bad_dir], check=True)
twice = os.path.join(bad_dir, "twice.yaml")
with open(twice, "w") as f:
    f.write("defaults:\n  - model: mlp\n  - data: digits\n  - model: cnn\n  - trainer: quickstart\n"
            "  - _self_\nrun: {name: twice, dir: x, seed: 0}\n")
done = qat("train", twice, "--print-config")
check(done.returncode == 1 and f"{twice}:4:5" in done.stderr and "'model' a second time" in done.stderr,
      f"a group named twice in defaults is refused at its line: {done.stderr.strip()}")

# -- 2. the sweep --------------------------------------------------------------------------------


def sweep_case(recipe, key, value, run_dir):
    override = f"{key}={value}" if key in present[recipe] else f"+{key}={value}"
    done = qat("train", recipe, f"run.dir={run_dir}", override, "--check")
    return key, override, done


present = {DIGITS: dict(numeric_leaves(composed(DIGITS))), KJV: dict(numeric_leaves(composed(KJV)))}
digits_cases, kjv_cases = [], []
for key, current in present[DIGITS].items():
    huge = HUGE_FLOAT if isinstance(current, float) else HUGE_INT
    for value in (0, -1, huge):
        digits_cases.append((DIGITS, key, value))
# The text task's and the Llama model's keys, which the digits recipe has not (the sample's length
# is added where kjv.yaml leaves it out).
text_keys = {"data.context": 0, "data.held_out": 0.0, "data.eval_windows": 0, "model.hidden_size": 0,
             "model.intermediate_size": 0, "model.num_hidden_layers": 0,
             "model.num_attention_heads": 0, "model.num_key_value_heads": 0,
             "trainer.sample.tokens": 0}
for key, kind in text_keys.items():
    huge = HUGE_FLOAT if isinstance(present[KJV].get(key, kind), float) else HUGE_INT
    for value in (0, -1, huge):
        kjv_cases.append((KJV, key, value))
check(len(digits_cases) >= 3 * 40, f"the digits sweep covers {len(digits_cases) // 3} numeric keys")
check(len(kjv_cases) == 3 * len(text_keys), f"the kjv sweep covers {len(kjv_cases) // 3} text keys")

accepted = []
with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    futures = [pool.submit(sweep_case, recipe, key, value, os.path.join(WORK, f"sweep{i}"))
               for i, (recipe, key, value) in enumerate(digits_cases + kjv_cases)]
    for (recipe, key, value), future in zip(digits_cases + kjv_cases, futures):
        key, override, done = future.result()
        why = clean_outcome(done, recipe, key)
        if why:
            check(False, f"{os.path.basename(recipe)} {override} --check: {why}")
        elif done.returncode == 0 and recipe == DIGITS and value in (0, -1):
            accepted.append((key, override))
check(True, f"sweep: {len(digits_cases) + len(kjv_cases)} values checked, each passed --check "
            f"or was refused in one line naming the key")

# -- 3. what the check accepts runs ---------------------------------------------------------------


def short_run(i, key, override):
    run_dir = os.path.join(WORK, f"short{i}")
    done = qat("train", DIGITS, f"run.dir={run_dir}", *SHORT, override, timeout=300)
    return key, override, done


with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    runs = [pool.submit(short_run, i, key, override) for i, (key, override) in enumerate(accepted)]
    for future in runs:
        key, override, done = future.result()
        why = clean_outcome(done, DIGITS, key)
        check(not why, f"{override}: accepted by --check, and the short job "
                       + ("runs" if done.returncode == 0 else "stops in one line") + (f" ({why})" if why else ""))
check(len(accepted) >= 5, f"{len(accepted)} values at 0 or -1 were accepted and run")

sys.exit(report(checks, failures))
