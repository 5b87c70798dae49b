"""Demo-only DKIM signing keys: generated once, committed, and reused so output is reproducible."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# RSA key generation is not reproducible from a seed with a well-kept library, so the keys
# are generated on first use and committed under data/demo-tenant/keys/; later runs reuse
# them byte for byte.
KEYS_DIR = Path(__file__).resolve().parents[2] / "data" / "demo-tenant" / "keys"

def key_path(keys_dir: Path, domain: str, selector: str) -> Path:
    return keys_dir / f"{selector}._domainkey.{domain}.pem"


def load_or_create(keys_dir: Path, domain: str, selector: str, bits: int) -> bytes:
    """PKCS#1 PEM private key for (domain, selector); created once if missing."""
    path = key_path(keys_dir, domain, selector)
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # dkimpy reads PKCS#1
            serialization.NoEncryption(),
        )
        path.write_bytes(pem)
    return path.read_bytes()


def _load(private_pem: bytes):
    # our own committed keys: skipping the (slow) RSA consistency check saves ~25 ms per key
    return serialization.load_pem_private_key(private_pem, password=None, unsafe_skip_rsa_key_validation=True)


def public_txt(private_pem: bytes) -> str:
    """The DKIM key record value (`v=DKIM1; k=rsa; p=...`) for a private key."""
    key = _load(private_pem)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def key_bits(private_pem: bytes) -> int:
    return _load(private_pem).key_size
