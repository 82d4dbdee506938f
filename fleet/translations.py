"""Translation catalogs: compiled from the .po at build time, never committed.

Pure Python (polib), so neither the image nor a developer machine needs GNU
gettext just to run; `untranslated()` is what the i18n check asserts on.
"""

from __future__ import annotations

from pathlib import Path

import polib

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"


def catalogs(locale_dir: Path = LOCALE_DIR) -> list[Path]:
    return sorted(locale_dir.glob("*/LC_MESSAGES/*.po"))


def compile_catalogs(locale_dir: Path = LOCALE_DIR, force: bool = False) -> list[Path]:
    """Write each stale .mo next to its .po (atomically); returns those written."""
    written = []
    for po_path in catalogs(locale_dir):
        mo_path = po_path.with_suffix(".mo")
        if not force and mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        tmp = mo_path.with_suffix(".mo.tmp")
        polib.pofile(str(po_path)).save_as_mofile(str(tmp))
        tmp.replace(mo_path)
        written.append(mo_path)
    return written


def untranslated(po_path: Path) -> list[str]:
    """Msgids a user would see in English: empty msgstr or marked fuzzy."""
    catalog = polib.pofile(str(po_path))
    missing = [e.msgid for e in catalog.untranslated_entries()]
    missing += [f"(fuzzy) {e.msgid}" for e in catalog.fuzzy_entries()]
    for entry in catalog.translated_entries():
        if entry.msgid_plural and not all(entry.msgstr_plural.values()):
            missing.append(f"(plural) {entry.msgid}")
    return missing
