#!/usr/bin/env bash
# Prepares the real text the tokenizer conformance test and benchmark run on (about 2.5 MB,
# UTF-8), from Debian packages fetched with `apt-get download` and unpacked with `dpkg -x`
# (no sudo, nothing installed):
#
#   english.txt   KJV Bible (qat's cached kjv.txt, else bible-kjv-text), Jargon File, fortunes
#   code.txt      C headers (linux-libc-dev), Python sources (libpython3.11-stdlib)
#   german.txt    manpages-de (roff source), fortunes-de
#   russian.txt   manpages-ru, fortunes-ru
#   japanese.txt  manpages-ja
#   tables.txt    tzdata's zone / iso3166 tables, pci.ids (digits, tabs, long space runs)
#
# Output: ${QAT_CACHE:-$HOME/.cache/qat}/data/text/*.txt and MANIFEST.tsv (output file,
# package, version, path inside the package, bytes). Idempotent: a complete directory is left alone.
set -euo pipefail

cache=${QAT_CACHE:-$HOME/.cache/qat}
out=$cache/data/text
debs=$cache/debs/text
stamp=$out/.complete-v1
log() { echo "[text-fixtures] $*"; }

if [[ -f $stamp ]]; then
  log "present: $out ($(cat "$out"/*.txt | wc -c) bytes)"
  exit 0
fi

mkdir -p "$out" "$debs"
packages=(jargon-text fortunes fortunes-min fortunes-de fortunes-ru manpages-de manpages-ru
          manpages-ja linux-libc-dev libpython3.11-stdlib tzdata pci.ids)
[[ -s $cache/data/kjv.txt ]] || packages+=(bible-kjv-text)
for p in "${packages[@]}"; do
  if ! ls "$debs/${p}"_*.deb >/dev/null 2>&1; then
    log "apt-get download $p"
    if ! (cd "$debs" && apt-get download -qq "$p" 2>/dev/null); then
      echo "[text-fixtures] apt-get download $p failed (run 'apt-get update' first?)" >&2
      exit 1
    fi
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in "${packages[@]}"; do
  deb=$(ls -t "$debs/${p}"_*.deb | head -1)
  mkdir -p "$tmp/$p"
  dpkg -x "$deb" "$tmp/$p"
  dpkg-deb -f "$deb" Version >"$tmp/$p.version"
done

python=$(command -v python3)
"$python" - "$tmp" "$out" "$cache/data/kjv.txt" <<'PY'
import glob, gzip, os, sys

tmp, out, kjv = sys.argv[1:4]
manifest = []


def version(pkg):
    with open(os.path.join(tmp, pkg + ".version")) as f:
        return f.read().strip()


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def take(pkg, pattern, budget, exclude=()):
    """Whole files matching the glob (sorted), then a last one cut at a line end, up to budget
    bytes of UTF-8."""
    root = os.path.join(tmp, pkg) if pkg else ""
    parts, used = [], 0
    for path in sorted(glob.glob(os.path.join(root, pattern.lstrip("/")) if pkg else pattern,
                                 recursive=True)):
        if not os.path.isfile(path) or os.path.islink(path) or any(e in path for e in exclude):
            continue
        text = read(path)
        if not text or "\x00" in text:
            continue
        left = budget - used
        if left <= 0:
            break
        if len(text.encode()) > left:
            cut = text.encode()[:left].decode("utf-8", "ignore")
            text = cut[: cut.rfind("\n") + 1] or cut
        if not text:
            continue
        parts.append(text)
        n = len(text.encode())
        used += n
        rel = os.path.relpath(path, root) if pkg else path
        manifest.append((pkg or "qat cache", version(pkg) if pkg else "-", "/" + rel if pkg else rel, n))
    return parts


specs = {
    "english.txt": [("", kjv, 700_000, ())] if os.path.exists(kjv) else
                   [("bible-kjv-text", "usr/share/**/*", 700_000, ())],
    "code.txt": [("linux-libc-dev", "usr/include/linux/*.h", 250_000, ()),
                 ("libpython3.11-stdlib", "usr/lib/python3.11/*.py", 250_000, ())],
    "german.txt": [("manpages-de", "usr/share/man/de/man1/*.gz", 220_000, ()),
                   ("fortunes-de", "usr/share/games/fortunes/de/*", 100_000, (".dat", ".u8"))],
    "russian.txt": [("manpages-ru", "usr/share/man/ru/man1/*.gz", 220_000, ()),
                    ("fortunes-ru", "usr/share/games/fortunes/ru/*", 80_000, (".dat", ".u8"))],
    "japanese.txt": [("manpages-ja", "usr/share/man/ja/man1/*.gz", 220_000, ())],
    "tables.txt": [("tzdata", "usr/share/zoneinfo/*.tab", 60_000, ()),
                   ("pci.ids", "usr/share/misc/pci.ids", 120_000, ())],
}
specs["english.txt"] += [("jargon-text", "usr/share/**/jargon*", 350_000, ()),
                         ("fortunes", "usr/share/games/fortunes/*", 150_000, (".dat", ".u8")),
                         ("fortunes-min", "usr/share/games/fortunes/*", 50_000, (".dat", ".u8"))]
files = {}
for name, groups in specs.items():
    files[name] = []
    for pkg, pattern, budget, exclude in groups:
        start = len(manifest)
        files[name] += take(pkg, pattern, budget, exclude)
        manifest[start:] = [(name,) + row for row in manifest[start:]]
total = 0
for name, parts in files.items():
    text = "".join(parts)
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
        f.write(text)
    total += len(text.encode())
    print(f"[text-fixtures] {name}: {len(text.encode())} bytes from {len(parts)} files")
with open(os.path.join(out, "MANIFEST.tsv"), "w", encoding="utf-8") as f:
    f.write("file\tpackage\tversion\tpath\tbytes\n")
    for row in manifest:
        f.write("\t".join(map(str, row)) + "\n")
if total < 1_000_000:
    sys.exit(f"[text-fixtures] only {total} bytes of text, want >= 1 MB")
print(f"[text-fixtures] {total} bytes in {out}")
PY
touch "$stamp"
