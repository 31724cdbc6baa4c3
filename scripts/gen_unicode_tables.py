#!/usr/bin/env python3
"""Generates trainers/text/unicode_tables.inc: the Unicode code point classes the
tokenizer.json pre-tokenizers need, as sorted [first, last] ranges.

  kLetter      General_Category L*            (onig's \\p{L})
  kNumber      General_Category N*            (onig's \\p{N}, Rust's char::is_numeric)
  kWhiteSpace  White_Space property           (onig's \\s, Rust's char::is_whitespace)
  kWord        Alphabetic | M* | Nd | Pc | Join_Control  (Rust regex's Unicode \\w)
  kRustNumber  General_Category N* at Rust std's Unicode version (char::is_numeric, used by
               the Digits pre-tokenizer): 17.0 in tokenizers 0.23.3, one more than onig's

The data is Debian's `unicode-data` package (UnicodeData.txt, PropList.txt,
DerivedCoreProperties.txt), fetched with `apt-get download` + `dpkg -x` into a
temporary directory (no sudo), unless --ucd DIR points at an unpacked copy.

Debian 12 ships Unicode 15.0, but the Oniguruma inside tokenizers 0.23 (and Rust's
char::is_numeric) know Unicode 16.0: 4924 more letters and 80 more numbers (checked
code point by code point against tokenizers' Split(\\p{L}) / Split(\\p{N})). So the
General_Category of every code point is taken from PyPI's `unicodedata2` at the pinned
Unicode version (a wheel fetched with `pip download` into the temporary directory,
never installed) when --unicode-version is not "debian"; White_Space, Join_Control and
Alphabetic stay Debian's (White_Space is unchanged in 16.0; Alphabetic is only used for
single_word added tokens, and every new letter is added to kWord anyway).
tests/python/test_hf_tokenizer.py's Unicode sweep checks the result against tokenizers.

  scripts/gen_unicode_tables.py [--ucd /usr/share/unicode] [--unicode-version 16.0.0|debian]
                                [-o trainers/text/unicode_tables.inc]
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile


def fetch_ucd(tmp: str) -> str:
    subprocess.run(["apt-get", "download", "unicode-data"], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    deb = glob.glob(os.path.join(tmp, "unicode-data_*.deb"))[0]
    subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, "x")], check=True)
    return os.path.join(tmp, "x", "usr", "share", "unicode")


def general_categories(path: str) -> dict:
    """code point -> two-letter category, with <..., First>/<..., Last> ranges expanded."""
    cats = {}
    first = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split(";")
            cp, name, cat = int(fields[0], 16), fields[1], fields[2]
            if name.endswith(", First>"):
                first = cp
                continue
            if name.endswith(", Last>"):
                for c in range(first, cp + 1):
                    cats[c] = cat
                first = None
                continue
            cats[cp] = cat
    return cats


def prop(path: str, name: str) -> set:
    out = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#")[0].strip()
            if not line:
                continue
            rng, p = [x.strip() for x in line.split(";")[:2]]
            if p != name:
                continue
            if ".." in rng:
                a, b = rng.split("..")
                out.update(range(int(a, 16), int(b, 16) + 1))
            else:
                out.add(int(rng, 16))
    return out


def ranges(cps: set) -> list:
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def emit(name: str, cps: set, comment: str) -> str:
    rs = ranges(cps)
    lines = [f"// {comment}: {len(cps)} code points in {len(rs)} ranges",
             f"static const CodeRange {name}[] = {{"]
    row = []
    for a, b in rs:
        row.append(f"{{0x{a:X}, 0x{b:X}}}")
        if len(row) == 6:
            lines.append("    " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("    " + ", ".join(row) + ",")
    lines.append("};")
    return "\n".join(lines) + "\n"


def categories_from_unicodedata2(version: str, tmp: str) -> dict:
    """code point -> category from PyPI's unicodedata2 wheel (downloaded, not installed)."""
    import zipfile
    where = os.path.join(tmp, "ud2-" + version)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", where,
                    f"unicodedata2=={version}"], check=True)
    wheel = glob.glob(os.path.join(where, "unicodedata2-*.whl"))[0]
    zipfile.ZipFile(wheel).extractall(where)
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import unicodedata2 as u; "
            "assert u.unidata_version == sys.argv[2], u.unidata_version; "
            "print(json.dumps({c: u.category(chr(c)) for c in range(0x110000) "
            "if u.category(chr(c)) != 'Cn'}))")
    out = subprocess.run([sys.executable, "-c", code, where, version], check=True,
                         capture_output=True, text=True).stdout
    return {int(k): v for k, v in __import__("json").loads(out).items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ucd", help="directory with UnicodeData.txt, PropList.txt, DerivedCoreProperties.txt")
    ap.add_argument("--unicode-version", default="16.0.0",
                    help="unicodedata2 version for General_Category, or 'debian'")
    ap.add_argument("--rust-unicode-version", default="17.0.0",
                    help="unicodedata2 version for kRustNumber (Rust std's Unicode)")
    ap.add_argument("-o", "--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "trainers", "text", "unicode_tables.inc"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ucd = args.ucd or fetch_ucd(tmp)
        cats = general_categories(os.path.join(ucd, "UnicodeData.txt"))
        white = prop(os.path.join(ucd, "PropList.txt"), "White_Space")
        join = prop(os.path.join(ucd, "PropList.txt"), "Join_Control")
        alpha = prop(os.path.join(ucd, "DerivedCoreProperties.txt"), "Alphabetic")
        rust_cats = cats
        if args.unicode_version != "debian":
            cats = categories_from_unicodedata2(args.unicode_version, tmp)
            rust_cats = categories_from_unicodedata2(args.rust_unicode_version, tmp)
        version = "?"
        for path in glob.glob(os.path.join(ucd, "DerivedAge.txt")):
            with open(path, encoding="utf-8") as f:
                version = f.readline().strip("# \n")  # "DerivedAge-15.0.0.txt"
    letter = {c for c, k in cats.items() if k.startswith("L")}
    number = {c for c, k in cats.items() if k.startswith("N")}
    word = alpha | letter | {c for c, k in cats.items() if k.startswith("M") or k in ("Nd", "Nl", "Pc")} | join
    source = (f"General_Category: unicodedata2 {args.unicode_version} (kRustNumber: "
              f"{args.rust_unicode_version}) from PyPI; properties"
              if args.unicode_version != "debian" else "everything")
    out = ["// Generated by scripts/gen_unicode_tables.py. Do not edit.",
           f"// {source}: Debian's unicode-data package ({version}).", ""]
    out.append(emit("kLetter", letter, "General_Category L"))
    out.append(emit("kNumber", number, "General_Category N"))
    out.append(emit("kWhiteSpace", white, "White_Space"))
    out.append(emit("kWord", word, "Alphabetic | M | Nd | Pc | Join_Control"))
    rust_number = {c for c, k in rust_cats.items() if k.startswith("N")}
    out.append(emit("kRustNumber", rust_number, "General_Category N, Rust std's Unicode"))
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    print(f"wrote {args.output}: L {len(letter)}, N {len(number)}, White_Space {len(white)}, "
          f"word {len(word)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
