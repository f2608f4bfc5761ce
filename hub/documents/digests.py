"""Raw signatures over a digest, the convention every signer's ``sign_digests`` follows.

RSA: PKCS#1 v1.5 over the DigestInfo of the digest; ECDSA: the DER ``ECDSA-Sig-Value``. What was
hashed (an XML SignedInfo, a CMS signed-attributes set) is the document layer's business; a key
holder sees only the digest.
"""

from __future__ import annotations

from asn1crypto import algos
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

__all__ = ["digest_info", "sign_digest", "verify_digest"]

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[algorithm]()
    except KeyError:
        raise ValueError(f"digest algorithm {algorithm!r} is not one of {', '.join(_HASHES)}") from None


def digest_info(digest: bytes, algorithm: str = "sha256") -> bytes:
    """The DER DigestInfo an RSA PKCS#1 v1.5 signature covers (for tokens that sign it raw)."""
    _hash(algorithm)
    return algos.DigestInfo({"digest_algorithm": {"algorithm": algorithm}, "digest": digest}).dump()


def sign_digest(private_key, digest: bytes, algorithm: str = "sha256") -> bytes:
    """Sign ``digest`` with a ``cryptography`` RSA or EC private key."""
    prehashed = utils.Prehashed(_hash(algorithm))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(digest, padding.PKCS1v15(), prehashed)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(digest, ec.ECDSA(prehashed))
    raise ValueError(f"a {type(private_key).__name__} cannot sign a digest here (RSA or ECDSA only)")


def verify_digest(public_key, signature: bytes, digest: bytes, algorithm: str = "sha256") -> bool:
    """Whether ``signature`` is ``public_key``'s over ``digest`` (the convention above)."""
    prehashed = utils.Prehashed(_hash(algorithm))
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
