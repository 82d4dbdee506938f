"""zh-Hans is complete: every msgid in the sources is in the catalog, translated.

The .mo is a build artefact; these tests check the .po it is built from, and
that it compiles.
"""

from __future__ import annotations

import gettext
import os
import shutil
import subprocess
import sys

import pytest

from fleet.translations import LOCALE_DIR, compile_catalogs, untranslated

ROOT = LOCALE_DIR.parent
PO = LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "django.po"
SOURCES = ("fleet", "compression", "devices", "ota", "templates")


def test_catalog_has_no_untranslated_or_fuzzy_entry():
    missing = untranslated(PO)
    assert not missing, "untranslated in zh-Hans:\n  " + "\n  ".join(missing)


def test_catalog_compiles_and_translates(tmp_path):
    target = tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES"
    target.mkdir(parents=True)
    shutil.copy(PO, target / "django.po")
    written = compile_catalogs(tmp_path / "locale", force=True)
    assert written == [target / "django.mo"]
    with open(target / "django.mo", "rb") as fh:
        catalog = gettext.GNUTranslations(fh)
    assert catalog.gettext("Models and compression") == "模型与压缩"


@pytest.mark.slow
def test_every_source_string_is_in_the_catalog(tmp_path):
    """makemessages on a copy of the sources: nothing new, nothing fuzzy."""
    if not shutil.which("xgettext") or not shutil.which("msgmerge"):
        if os.environ.get("CI"):
            pytest.fail("GNU gettext (xgettext, msgmerge) is needed for the i18n check")
        pytest.skip("GNU gettext not installed")
    keep = shutil.ignore_patterns(
        "*.onnx", "*.npz", "*.npy", "*.bin", "*.mo", "__pycache__", "static"
    )
    for name in SOURCES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=keep)
    shutil.copytree(LOCALE_DIR, tmp_path / "locale", ignore=keep)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run(
        [sys.executable, "-m", "django", "makemessages", "-l", "zh_Hans", "-v0"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=300,
    )
    missing = untranslated(tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po")
    assert not missing, (
        "strings in templates/Python without a zh-Hans translation (add them to "
        f"{PO.relative_to(ROOT)}):\n  " + "\n  ".join(missing)
    )
