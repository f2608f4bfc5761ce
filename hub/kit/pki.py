"""A throwaway PKI for tests and demos: one root CA and a PKCS#12 file per signing identity.

Nothing here is fit for production keys: the root's private key lies unencrypted beside its
certificate. It exists so the whole pipeline signs with real certificates, offline, and so
validators (pyHanko, poppler's ``pdfsig``) have a root to trust.

Files in the directory: ``root-ca.pem`` (trust this), ``root-ca.key``, ``<key>.p12`` per
identity (``SigningIdentity.key``: personal id, or the school code for a seal), and
``tsa.pem``/``tsa.key`` for a timestamping authority (``issue_tsa``).

Certificates issued with ``services_url`` name an OCSP responder (``<url>/ocsp``) and a CRL
(``<url>/crl``) there, as a real CA's do: ``hub.kit.tsa.TrustServices`` answers both on loopback
(with certomancer's responders),
so PAdES B-LT signatures can embed real revocation data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)

from hub.contracts import ORGANISATION_ROLES, SigningIdentity

__all__ = ["ROOT_CERT", "TSA_CERT", "TSA_KEY", "create_root", "ensure_pki", "issue", "issue_tsa",
           "load_root", "sign_xml"]

ROOT_CERT = "root-ca.pem"
_ROOT_KEY = "root-ca.key"
TSA_CERT = "tsa.pem"
TSA_KEY = "tsa.key"
# RFC 9336 id-kp-documentSigning; emailProtection too, because NSS (poppler's pdfsig) checks
# document signatures with its e-mail signer usage.
_DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
_ROLE_TITLES = {"subject_teacher": "Giáo viên bộ môn", "homeroom_teacher": "Giáo viên chủ nhiệm", "principal": "Hiệu trưởng",
                "school_seal": "Con dấu nhà trường", "department": "Sở Giáo dục và Đào tạo"}


def _key() -> rsa.RSAPrivateKey:
    # RSA-2048 costs ≈25 ms to generate here; a test PKI of a handful of keys does not need more.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _save(key: rsa.RSAPrivateKey, key_path: Path, cert: x509.Certificate, cert_path: Path) -> Path:
    """Write a service's unencrypted key (readable by its owner only) and certificate as PEM."""
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def create_root(directory: Path, name: str = "hocba-hub Test Root CA") -> Path:
    """Create the root CA in ``directory`` if it has none; return the root certificate's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / ROOT_CERT
    if cert_path.exists() and (directory / _ROOT_KEY).exists():
        return cert_path
    key = _key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hocba-hub test PKI"),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(key, directory / _ROOT_KEY, cert, cert_path)


def load_root(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The root CA's certificate and private key (for the loopback OCSP responder and CRL)."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate((directory / ROOT_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / _ROOT_KEY).read_bytes(), password=None)
    return cert, key  # type: ignore[return-value]



def _revocation_pointers(builder: x509.CertificateBuilder, services_url: str | None) -> x509.CertificateBuilder:
    # A validator finds revocation data only where the certificate says: AIA for OCSP, CDP for
    # the CRL. Without them a B-LT signature has nothing to embed.
    if not services_url:
        return builder
    base = services_url.rstrip("/")
    return (builder
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(f"{base}/ocsp"))]),
                critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(f"{base}/crl")], relative_name=None,
                reasons=None, crl_issuer=None)]), critical=False))


def issue(directory: Path, identities: Iterable[SigningIdentity], password: str | bytes, *,
          expired: bool = False, not_yet_valid: bool = False, overwrite: bool = False,
          services_url: str | None = None) -> None:
    """Write ``<key>.p12`` for each identity that has none yet (all of them with ``overwrite``).

    Certificates name the holder (CN), the key (serialNumber), the role (title, OU) and the
    school (O = school code), with keyUsage digitalSignature + nonRepudiation and a chain to
    the root, which is created when missing. ``expired`` issues certificates whose validity
    ended yesterday and ``not_yet_valid`` ones that start tomorrow, for testing that signers
    refuse them. ``services_url`` names the OCSP responder and CRL (``hub.kit.tsa.TrustServices``).
    """
    directory = Path(directory)
    create_root(directory)
    root_cert, root_key = load_root(directory)
    secret = password.encode() if isinstance(password, str) else password
    now = dt.datetime.now(dt.timezone.utc)
    if expired:
        not_before, not_after = now - dt.timedelta(days=400), now - dt.timedelta(days=1)
    elif not_yet_valid:
        not_before, not_after = now + dt.timedelta(days=1), now + dt.timedelta(days=730)
    else:
        not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=730)
    # The algorithms of a real key file (PBES2, AES-256, SHA-256 MAC) with fewer PBKDF2 rounds
    # than cryptography's default: every signer process opens every file.
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(2048)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(secret))
    done: set[str] = set()
    for identity in identities:
        path = directory / f"{identity.key}.p12"
        if identity.key in done or (path.exists() and not overwrite):
            continue
        done.add(identity.key)
        key = _key()
        subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.school_code),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
            x509.NameAttribute(NameOID.TITLE, _ROLE_TITLES.get(identity.role, identity.role)),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, identity.key),
            # Vietnamese CAs name the holder's identifier in UID: CCCD:<12 digits> for a person,
            # MST:<tax code> for an organisation (the test PKI's schools have no tax code: their
            # school code stands in).
            x509.NameAttribute(NameOID.USER_ID, ("MST:" if identity.role in ORGANISATION_ROLES else "CCCD:")
                               + identity.key),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([_DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                           critical=False)
        )
        cert = _revocation_pointers(builder, services_url).sign(root_key, hashes.SHA256())
        blob = pkcs12.serialize_key_and_certificates(identity.key.encode(), key, cert, [root_cert], encryption)
        tmp = path.with_suffix(".p12.tmp")
        tmp.write_bytes(blob)
        tmp.chmod(0o600)
        tmp.replace(path)  # a half-written key file must never be picked up by a signer


def ensure_pki(directory: Path, identities: Iterable[SigningIdentity], password: str | bytes) -> Path:
    """Root CA plus a key file for every identity that lacks one; return the root certificate path."""
    root = create_root(directory)
    issue(directory, identities, password)
    return root


def issue_tsa(directory: Path, *, services_url: str | None = None, overwrite: bool = False) -> Path:
    """A timestamping authority's certificate (``tsa.pem``) and key (``tsa.key``) under the root.

    RFC 3161 requires the critical extended key usage timeStamping and nothing else.
    """
    directory = Path(directory)
    create_root(directory)
    cert_path = directory / TSA_CERT
    if cert_path.exists() and (directory / TSA_KEY).exists() and not overwrite:
        return cert_path
    root_cert, root_key = load_root(directory)
    # P-256, not RSA: the loopback TSA (certomancer's TimeStamper) loads its key again for every
    # timestamp, and cryptography's checks of an RSA key cost ≈0.1 s where a P-256 key's are free.
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hocba-hub test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, "hocba-hub Test Timestamping Authority"),
        ]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                       critical=False)
    )
    cert = _revocation_pointers(builder, services_url).sign(root_key, hashes.SHA256())
    return _save(key, directory / TSA_KEY, cert, cert_path)


def sign_xml(central: dict, roles: Iterable[str], directory: Path, password: str | bytes, *,
             root_name: str = "hocba-hub Test Root CA", xml_format: str = "xml",
             signing_time: dt.datetime | None = None) -> bytes:
    """The XML học bạ of ``central`` (the central format with its envelope: ``record_id``,
    ``version``, ``event``, ``updated_at``), signed in the slots of ``roles`` with keys of the
    test PKI in ``directory`` (created, with root ``root_name``, and a key issued for every
    signer the slots name): what a vendor's software delivers when teachers signed there.

    Slots whose person the record does not name (a subject with no teacher's personal id) stay
    empty. Signatures go in stage order, each covering the earlier ones as the hub's would.
    """
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    from hub.contracts import SIGNING_STAGES
    from hub.documents import xmldsig
    from hub.plugins import document_formats
    from hub.records import parse_transcript

    directory = Path(directory)
    secret = password.encode() if isinstance(password, str) else password
    fmt = document_formats()[xml_format].cls()
    document = fmt.build(parse_transcript(central))
    wanted = set(roles)
    slots = [s for s in fmt.slots(document) if s.role in wanted
             and (s.identity.personal_id or s.role == "school_seal")]
    create_root(directory, root_name)
    issue(directory, [s.identity for s in slots], secret)
    root_der = load_root(directory)[0].public_bytes(serialization.Encoding.DER)
    when = (signing_time or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    for role in SIGNING_STAGES:
        batch = [s for s in slots if s.role == role]
        if not batch:
            continue
        keys = {}
        for slot in batch:
            key, cert, _ = pkcs12.load_key_and_certificates(
                (directory / f"{slot.identity.key}.p12").read_bytes(), secret)
            keys[slot.signature_id] = (key, cert.public_bytes(serialization.Encoding.DER))
        prepared = xmldsig.prepare(document, [(s, [keys[s.signature_id][1], root_der]) for s in batch],
                                   signing_time=when)
        values = {sid: keys[sid][0].sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
                  for sid, digest in prepared.digests.items()}
        document = xmldsig.complete(prepared, values)
    return document
