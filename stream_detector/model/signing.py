"""Ed25519 signatures on model artifacts.

A TorchScript file is executable code: anyone who can write Redis could otherwise swap the model.
The publisher (``stream-detector publish``, the retrainer) signs ``"{version}\\n{sha256}"`` with a
private key that never enters Redis; workers configured with the public key
(``SD_VERIFY_KEY_FILE``) refuse unsigned or mismatched artifacts *before* ``torch.jit.load``. The
sha256 already binds every content file (see ``bundle.py``), so signing it signs the bundle.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError, ModelError

SIGNATURE_FIELD = "_signature"


def _message(version: str, sha256: str) -> bytes:
    return f"{version}\n{sha256}".encode()


class Signer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the Ed25519 signing key {path}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, version: str, sha256: str) -> bytes:
        return self.key.sign(_message(version, sha256))


class Verifier:
    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key

    @classmethod
    def from_file(cls, path: str | Path) -> Verifier:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the Ed25519 verify key {path}: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 public key")
        return cls(key)

    def verify(self, version: str, sha256: str, signature: bytes | None) -> None:
        if not signature:
            raise ModelError(f"model {version} is not signed and signatures are required")
        try:
            self.key.verify(signature, _message(version, sha256))
        except InvalidSignature:
            raise ModelError(f"model {version}: signature does not match (not signed by our key)") from None


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Write ``signing.pem`` (private, mode 0600) and ``verify.pem`` (public) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = directory / "signing.pem"
    public = directory / "verify.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
