"""Rebuild data/sample/ from ../shared/corpus: a fixed, licence-clean selection (never phishing_pot).

Usage: .venv/bin/python data/make_sample.py [CORPUS_DIR]
Files are copied byte for byte under their corpus folder name, with that folder's licence files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SAMPLE = ROOT / "sample"
MAX_BYTES = 64_000  # keep the bundle small; large corpus files stay in the corpus

# (folder, glob inside it, how many, evenly spaced over the sorted matches). phishing_pot is
# CC BY-NC and must not be shipped; mail-parser's real malware carriers are left out.
SELECTION: tuple[tuple[str, str, int], ...] = (
    ("spamassassin_publiccorpus", "easy_ham/*", 40),
    ("spamassassin_publiccorpus", "hard_ham/*", 10),
    ("spamassassin_publiccorpus", "spam/*", 40),
    ("spamassassin_t_data", "dkim/test-pass-0[1-4].msg", 4),
    ("spamassassin_t_data", "dkim/test-fail-0[1-3].msg", 3),
    ("spamassassin_t_data", "nice/0[0-1][0-9]", 6),
    ("spamassassin_t_data", "spam/0[0-1][0-9]", 6),
    ("spamassassin_t_data", "spam/fromnamespoof/*", 1),
    ("rspamd_test_messages", "dmarc/*.eml", 8),
    ("rspamd_test_messages", "received[1-7].eml", 7),
    ("rspamd_test_messages", "from/*.eml", 6),
    ("rspamd_test_messages", "newsletter.eml", 1),
    ("rspamd_test_messages", "sa_display_name_spoof.eml", 1),
    ("rspamd_test_messages", "arcallow.eml", 1),
    ("mail-parser_tests", "mail_test_13", 1),
    ("mail-parser_tests", "mail_malformed_1", 1),
    ("ruby-mail_fixtures", "error_emails/*.eml", 5),
    ("ruby-mail_fixtures", "multi_charset/japanese_iso_2022.eml", 1),
    ("ruby-mail_fixtures", "multi_charset/ks_c_5601-1987.eml", 1),
    ("ruby-mail_fixtures", "plain_emails/raw_email_multiple_from.eml", 1),
    ("mailauth_fixtures", "arc-pass.eml", 1),
    ("mailauth_fixtures", "message3.eml", 1),
    ("mailauth_fixtures", "authtest.eml", 1),
    ("stalwart_mail-auth_resources", "arf/00[1-2].eml", 2),
    ("authheaders_tests", "test.message_signed", 1),
    ("authheaders_tests", "test.nofrom.message", 1),
    ("dkimpy_testdata", "rfc6376.signed.msg", 1),
    ("seed_example", "otp-headers-pasted.txt", 1),
    ("seed_example", "README.md", 1),
)

LICENCES = {
    "spamassassin_publiccorpus": ("LICENSE-NOTE.txt",),
    "spamassassin_t_data": ("LICENSE",),
    "rspamd_test_messages": ("LICENSE.md",),
    "mail-parser_tests": ("LICENSE.txt",),
    "ruby-mail_fixtures": ("MIT-LICENSE",),
    "mailauth_fixtures": ("LICENSE.txt",),
    "stalwart_mail-auth_resources": ("LICENSE-Apache-2.0.txt", "LICENSE-MIT.txt"),
    "authheaders_tests": ("COPYING",),
    "dkimpy_testdata": ("LICENSE",),
    "seed_example": (),
}


def pick(corpus: Path, folder: str, pattern: str, n: int) -> list[Path]:
    files = sorted(p for p in (corpus / folder).glob(pattern) if p.is_file() and p.stat().st_size <= MAX_BYTES)
    if len(files) <= n:
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def main(corpus: Path) -> int:
    if SAMPLE.exists():
        shutil.rmtree(SAMPLE)
    copied = 0
    for folder, pattern, n in SELECTION:
        assert folder != "phishing_pot"
        for src in pick(corpus, folder, pattern, n):
            dst = SAMPLE / folder / src.relative_to(corpus / folder)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied += 1
    for folder, names in LICENCES.items():
        for name in names:
            shutil.copyfile(corpus / folder / name, SAMPLE / folder / name)
    print(f"{copied} files copied into {SAMPLE}")
    return 0


if __name__ == "__main__":
    default = ROOT.parents[1] / "shared" / "corpus"
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
