"""Real public text for the quality study, fetched from package registries (no dataset hub is reachable).

- Jane Austen's six novels (public domain): Debian's `r-cran-janeaustenr` package, an R lazy-load database
  (`data/Rdata.rdb` + `.rdx`), read with the `rdata` package (`pip install rdata`).
- 300 news articles (the "Lee" corpus that gensim ships as test data, `lee_background.cor`): the gensim 4.4.0
  wheel from PyPI, of which only that file is extracted.

Files are cached under `$OPTIMUM_GATENORM_CACHE/texts` (default `~/.cache/optimum_gatenorm/texts`); nothing is
committed. Run `python benchmarks/harness/texts.py` to fetch them and print their paths and sizes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from optimum_gatenorm.checkpoints.models import cache_dir


ROOT = Path(__file__).resolve().parents[2]  # the repository (this file also runs as a script)
AUSTEN_NOVELS = ("prideprejudice", "sensesensibility", "emma", "mansfieldpark", "northangerabbey", "persuasion")


def texts_dir() -> Path:
    path = cache_dir() / "texts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def austen(novel: str) -> Path:
    """Path of a UTF-8 text file with one Jane Austen novel (lines joined as in the book)."""
    if novel not in AUSTEN_NOVELS:
        raise ValueError(f"unknown novel {novel!r}; choose one of {', '.join(AUSTEN_NOVELS)}")
    target = texts_dir() / f"austen-{novel}.txt"
    if target.is_file():
        return target
    import rdata

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob("r-cran-janeaustenr_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        base = next((Path(tmp) / "x").rglob("janeaustenr/data/Rdata.rdx")).with_suffix("")
        index = rdata.conversion.convert(
            rdata.parser.parse_data(zlib.decompress(base.with_suffix(".rdx").read_bytes(), 47))
        )
        database = base.with_suffix(".rdb").read_bytes()
        for name, (offset, length) in index["variables"].items():
            blob = database[int(offset) : int(offset) + int(length)]
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            text = "\n".join(str(line) for line in lines).strip() + "\n"
            (texts_dir() / f"austen-{name}.txt").write_text(text, encoding="utf-8")
    return target


def lee_news() -> Path:
    """Path of the 300 news articles of gensim's `lee_background.cor`, one article per paragraph."""
    target = texts_dir() / "lee-background-news.txt"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "gensim==4.4.0", "-d", tmp],
            check=True,
            capture_output=True,
        )
        wheel = next(Path(tmp).glob("gensim-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            raw = archive.read("gensim/test/test_data/lee_background.cor").decode("utf-8")
    articles = [line.strip() for line in raw.splitlines() if line.strip()]
    target.write_text("\n\n".join(articles) + "\n", encoding="utf-8")
    return target


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    for path in [austen(novel) for novel in AUSTEN_NOVELS] + [lee_news()]:
        print(f"{path}  {path.stat().st_size:,} bytes")


# The texts of the replacement studies, by the name their --texts flag takes.
TEXTS = {
    "pride-and-prejudice": lambda: ROOT / "tests" / "data" / "pride_and_prejudice.txt",
    "lee-news": lambda: lee_news(),
    "emma": lambda: austen("emma"),
}
